"""A DeepSeek-V3-style causal language model in PyTorch, for training the default minillm model.

The main model computes the same function as transformers' DeepseekV3ForCausalLM, which
tests/test_train_tool.py checks against transformers 5.25. It has MLA attention with a
low-rank query, RoPE on adjacent pairs of the rope slice (HF's ``rope_interleave=True``), YaRN
frequencies and softmax scale, fp32 RMSNorm, a dense SwiGLU in the first
``first_k_dense_replace`` layers and DeepSeekMoE after them.

One multi-token-prediction (MTP) module predicts token i+2 from the final-norm hidden state at
position i and the embedding of token i+1: ``eh_proj(concat(enorm(emb), hnorm(h)))`` (embedding
first, the order vLLM and SGLang use with DeepSeek-V3 weights), then a full MLA + MoE decoder
block, ``shared_head.norm`` and the main output head. Embedding and head are shared with the
main model during training; the exporter writes copies of both for the MTP layer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from tools.torch_engram import Engram
from tools.torch_moe import MoE, SwiGLU


@dataclass
class ModelConfig:
    """Model hyper-parameters, named as in Hugging Face's DeepseekV3Config."""

    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 768
    moe_intermediate_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    q_lora_rank: int = 128
    kv_lora_rank: int = 64
    qk_nope_head_dim: int = 32
    qk_rope_head_dim: int = 16
    v_head_dim: int = 32
    n_routed_experts: int = 8
    n_shared_experts: int = 1
    num_experts_per_tok: int = 2
    n_group: int = 4
    topk_group: int = 2
    routed_scaling_factor: float = 2.5
    norm_topk_prob: bool = True
    first_k_dense_replace: int = 1
    num_nextn_predict_layers: int = 1
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 16384
    rope_scaling: dict = field(default_factory=dict)
    bos_token_id: int = 0
    eos_token_id: int = 1
    initializer_range: float = 0.02
    # Engram settings (keys as in config.json's "engram" block); None trains a plain DeepseekV3.
    engram: dict | None = None
    # Training-only: weight of the sequence-wise balance loss.
    balance_loss_alpha: float = 1e-4

    def __post_init__(self) -> None:
        if self.n_routed_experts % self.n_group != 0:
            raise ValueError(f"n_routed_experts {self.n_routed_experts} is not divisible by n_group {self.n_group}")
        if self.n_routed_experts // self.n_group < 2:
            raise ValueError("each expert group needs at least 2 experts: the group score sums the top 2")
        if not 0 < self.topk_group <= self.n_group:
            raise ValueError(f"topk_group {self.topk_group} must be in 1..n_group ({self.n_group})")
        if self.num_experts_per_tok > self.topk_group * (self.n_routed_experts // self.n_group):
            raise ValueError("num_experts_per_tok exceeds the number of experts in the kept groups")
        if self.num_nextn_predict_layers not in (0, 1):
            raise ValueError(f"num_nextn_predict_layers {self.num_nextn_predict_layers} is unsupported: use 0 or 1")
        if self.qk_rope_head_dim % 2 != 0:
            raise ValueError(f"qk_rope_head_dim {self.qk_rope_head_dim} must be even")

    def to_dict(self) -> dict:
        return asdict(self)


def yarn_mscale(scale: float, mscale: float) -> float:
    """YaRN magnitude factor ``1 + 0.1 * mscale * ln(scale)`` (1 for scale <= 1)."""
    if scale <= 1.0:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def rope_parameters(config: ModelConfig) -> tuple[torch.Tensor, float, float]:
    """Return (inverse frequencies [dr/2], cos/sin factor, softmax scale) for the rope slice.

    Without ``rope_scaling`` this is plain RoPE with scale ``(dn + dr) ** -0.5``. With YaRN the
    formulas follow transformers 5.25 ``_compute_yarn_parameters`` and ``yarn_apply_mscale``.
    Dimensions that rotate more than ``beta_fast`` times within
    ``original_max_position_embeddings`` keep their frequency, and those that rotate fewer than
    ``beta_slow`` times are divided by ``factor``, with a linear ramp between. The softmax scale
    is multiplied by ``yarn_mscale(factor, mscale_all_dim) ** 2``.
    """
    dim = config.qk_rope_head_dim
    base = config.rope_theta
    scale = (config.qk_nope_head_dim + config.qk_rope_head_dim) ** -0.5
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)

    rope = config.rope_scaling or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "default":
        return 1.0 / pos_freqs, 1.0, scale
    if rope_type != "yarn":
        raise ValueError(f"unsupported rope_scaling type {rope_type!r}; expected 'yarn' or none")

    factor = rope["factor"]
    original_length = rope["original_max_position_embeddings"]
    beta_fast = rope.get("beta_fast") or 32
    beta_slow = rope.get("beta_slow") or 1
    mscale = rope.get("mscale")
    mscale_all_dim = rope.get("mscale_all_dim")

    if mscale and mscale_all_dim:
        attention_factor = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
    else:
        attention_factor = yarn_mscale(factor, 1.0)

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original_length / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - keep) + (1.0 / pos_freqs) * keep

    if mscale_all_dim:
        scale = scale * yarn_mscale(factor, mscale_all_dim) ** 2
    return inv_freq, attention_factor, scale


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32, cast back to the input dtype before the weight (as HF does)."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs ``(x[2j], x[2j+1])`` of the last dimension by angle j.

    The result is stored de-interleaved (all first members, then all second members), as HF's
    ``apply_rotary_pos_emb_interleave`` does. Queries and keys get the same permutation, so
    attention scores equal those of the pairwise layout. ``cos``/``sin`` are [L, dr/2].
    """
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.cat([even * cos - odd * sin, odd * cos + even * sin], dim=-1)


class MLAttention(nn.Module):
    """Multi-head latent attention with a low-rank query (``q_lora_rank``) and shared rope key."""

    def __init__(self, config: ModelConfig, softmax_scale: float) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.nope_dim = config.qk_nope_head_dim
        self.rope_dim = config.qk_rope_head_dim
        self.v_dim = config.v_head_dim
        self.kv_rank = config.kv_lora_rank
        self.softmax_scale = softmax_scale
        qk_dim = self.nope_dim + self.rope_dim

        self.q_a_proj = nn.Linear(config.hidden_size, config.q_lora_rank, bias=False)
        self.q_a_layernorm = RMSNorm(config.q_lora_rank, config.rms_norm_eps)
        self.q_b_proj = nn.Linear(config.q_lora_rank, self.num_heads * qk_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(config.hidden_size, self.kv_rank + self.rope_dim, bias=False)
        self.kv_a_layernorm = RMSNorm(self.kv_rank, config.rms_norm_eps)
        self.kv_b_proj = nn.Linear(self.kv_rank, self.num_heads * (self.nope_dim + self.v_dim), bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.v_dim, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, seq_len, _ = x.shape

        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(batch, seq_len, self.num_heads, -1).transpose(1, 2)
        q_nope, q_rope = q.split([self.nope_dim, self.rope_dim], dim=-1)

        latent, k_rope = self.kv_a_proj_with_mqa(x).split([self.kv_rank, self.rope_dim], dim=-1)
        latent = self.kv_a_layernorm(latent)
        k_rope = k_rope.view(batch, 1, seq_len, self.rope_dim)

        q_rope = apply_rope(q_rope, cos, sin)
        k_rope = apply_rope(k_rope, cos, sin)

        kv = self.kv_b_proj(latent).view(batch, seq_len, self.num_heads, -1).transpose(1, 2)
        k_nope, value = kv.split([self.nope_dim, self.v_dim], dim=-1)

        query = torch.cat([q_nope, q_rope], dim=-1)
        key = torch.cat([k_nope, k_rope.expand(-1, self.num_heads, -1, -1)], dim=-1)
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=self.softmax_scale)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq_len, -1))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, softmax_scale: float, use_moe: bool, layer_id: int | None = None) -> None:
        super().__init__()
        if config.engram and layer_id in config.engram["layer_ids"]:
            self.engram = Engram(config.engram, layer_id, config.hidden_size, config.vocab_size,
                                 config.rms_norm_eps, RMSNorm)
        else:
            self.engram = None
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = MLAttention(config, softmax_scale)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MoE(config) if use_moe else SwiGLU(config.hidden_size, config.intermediate_size)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                input_ids: torch.Tensor | None = None) -> torch.Tensor:
        if self.engram is not None:
            h = h + self.engram(h, input_ids)
        h = h + self.self_attn(self.input_layernorm(h), cos, sin)
        return h + self.mlp(self.post_attention_layernorm(h))


class MTPModule(nn.Module):
    """One multi-token-prediction depth; its output head is the main model's ``lm_head``."""

    def __init__(self, config: ModelConfig, softmax_scale: float) -> None:
        super().__init__()
        self.enorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.hnorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=False)
        self.block = DecoderLayer(config, softmax_scale, use_moe=True)
        self.shared_head_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, next_embeds: torch.Tensor, hidden: torch.Tensor, cos, sin) -> torch.Tensor:
        h = self.eh_proj(torch.cat([self.enorm(next_embeds), self.hnorm(hidden)], dim=-1))
        return self.shared_head_norm(self.block(h, cos, sin))


class DeepseekV3LM(nn.Module):
    """Main model plus MTP modules; ``state_dict`` keys of the main model match HF's names."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        inv_freq, self.rope_attention_factor, softmax_scale = rope_parameters(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.model.layers = nn.ModuleList(
            DecoderLayer(config, softmax_scale, use_moe=i >= config.first_k_dense_replace, layer_id=i)
            for i in range(config.num_hidden_layers)
        )
        self.model.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.mtp = nn.ModuleList(MTPModule(config, softmax_scale) for _ in range(config.num_nextn_predict_layers))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise weights from N(0, initializer_range), as HF does; norms get 1, routing biases 0."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
            elif isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, MoE):
                nn.init.normal_(module.gate.weight, mean=0.0, std=std)
                module.gate.e_score_correction_bias.zero_()
            elif isinstance(module, nn.Conv1d):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def engram_modules(self) -> list[Engram]:
        return [layer.engram for layer in self.model.layers if layer.engram is not None]

    def set_engram_vocabulary(self, compressed_ids) -> None:
        """Install the compressed-token map (minillm.model.engram_hash.compress_vocabulary)."""
        for engram in self.engram_modules():
            engram.set_vocabulary(compressed_ids)

    def named_moe_layers(self) -> list[tuple[str, MoE]]:
        """Return (module name, MoE) pairs: main layers first, then the MTP block."""
        return [(name, module) for name, module in self.named_modules() if isinstance(module, MoE)]

    def moe_layers(self) -> list[MoE]:
        return [module for _, module in self.named_moe_layers()]

    def rope_tables(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(seq_len, device=device, dtype=torch.float32)
        angles = positions[:, None] * self.inv_freq.to(device)[None, :]
        return angles.cos() * self.rope_attention_factor, angles.sin() * self.rope_attention_factor

    def forward(self, input_ids: torch.Tensor, next_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Run the main model on ``input_ids`` [B, L] and, given ``next_ids``, the MTP module.

        ``next_ids[:, i]`` must be token i+1 (the main model's target at position i). Returns a dict
        with ``logits`` [B, L, V], ``hidden`` (after the final norm) and, with ``next_ids``,
        ``mtp_logits`` [B, L, V] predicting token i+2.
        """
        cos, sin = self.rope_tables(input_ids.shape[1], input_ids.device)
        h = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            h = layer(h, cos, sin, input_ids)
        hidden = self.model.norm(h)
        result = {"hidden": hidden, "logits": self.lm_head(hidden)}

        if next_ids is not None and len(self.mtp) > 0:
            mtp_hidden = self.mtp[0](self.model.embed_tokens(next_ids), hidden, cos, sin)
            result["mtp_logits"] = self.lm_head(mtp_hidden)
        return result

    def balance_loss(self) -> torch.Tensor:
        losses = [layer.balance_loss for layer in self.moe_layers() if layer.balance_loss is not None]
        if not losses:
            return torch.zeros(())
        return torch.stack(losses).sum()
