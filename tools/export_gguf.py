"""Export a minillm checkpoint (Hugging Face layout) as a GGUF file for llama.cpp's deepseek2.

Usage::

    python tools/export_gguf.py weights/minillm-tiny-baseline /tmp/minillm-tiny-baseline.gguf

The input is a checkpoint directory with ``config.json`` (model_type deepseek_v2 or deepseek_v3),
``model.safetensors`` (or shards) and ``tokenizer.json``. The output is one GGUF file, written with
the ``gguf`` package, that llama.cpp loads as architecture ``deepseek2``.

Weight types: matrices are F32 by default (``--outtype f32``), which keeps BF16 checkpoints exact
and lets llama.cpp's CPU backend multiply in float32 as minillm does. ``--outtype bf16`` halves the
file and is still exact for BF16 checkpoints, but llama.cpp then rounds activations to BF16
inside its matrix products, so greedy output can drift from minillm's. ``--outtype f16`` rounds
the weights to F16. Norm weights, the router (``ffn_gate_inp``) and the routing correction bias
(``exp_probs_b``) stay F32 whatever the choice, because expert selection is sensitive to rounding.

What the export does, in llama.cpp's terms (read in llama.cpp 0c1e57098, as vendored by
llama-cpp-python 0.3.36):

- MLA: ``kv_b_proj`` (H * (N + V), C) is split per head into ``attn_k_b`` (H, C, N) and
  ``attn_v_b`` (H, V, C), the layout of llama.cpp's absorbed attention. The latent cache then
  looks like one key/value head of width C + R, so ``head_count_kv`` is 1, ``key_length`` C + R
  and ``value_length`` C, while ``key_length_mla`` and ``value_length_mla`` keep the per-head
  sizes N + R and V.
- RoPE: DeepSeek rotates adjacent pairs of the RoPE slice, which is llama.cpp's normal (non-NeoX)
  RoPE for deepseek2, so the weights are written unpermuted.
- YaRN: factor, original context length and ``yarn_log_multiplier`` = 0.1 * mscale_all_dim (the
  0.1 is llama.cpp's convention for deepseek2). llama.cpp assumes mscale equals mscale_all_dim
  and uses its built-in beta_fast 32 and beta_slow 1, so other values are rejected.
- MoE: sigmoid or softmax gating, ``exp_probs_b`` from ``e_score_correction_bias``, weight
  renormalisation (``norm_topk_prob``), ``routed_scaling_factor``, expert groups (n_group and
  topk_group), shared experts, and ``first_k_dense_replace`` leading dense layers. Routed experts
  are stacked into (E, F, D) and (E, D, F) tensors.
- Tokenizer: byte-level BPE with merges (``tokenizer.ggml.model`` gpt2, pre-tokenizer gpt-2),
  special tokens as control tokens, BOS and EOS from config.json.

Not exported: the MTP module (layer ``num_hidden_layers``). Checkpoints with an ``engram`` block
are rejected, because llama.cpp has no counterpart for Engram memory. The file is written under
a temporary name in the output directory and renamed when complete, so a failed export leaves
no partial file. Errors on bad input are one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minillm.config import ModelConfig, read_config_json  # noqa: E402
from minillm.errors import MiniLLMError  # noqa: E402
from minillm.io.safetensors import Checkpoint, f32_to_bf16  # noqa: E402
from minillm.io.weights import expected_shapes, stored_mtp_modules  # noqa: E402

logger = logging.getLogger(__name__)

ARCHITECTURE = "deepseek2"
ENGRAM_BASELINE = "weights/minillm-tiny-baseline"
OUTTYPES = ("f32", "bf16", "f16")
# llama.cpp's deepseek2 (0c1e57098) reads no beta keys from GGUF and always uses these YaRN ramp bounds.
LLAMA_CPP_YARN_BETA_FAST = 32.0
LLAMA_CPP_YARN_BETA_SLOW = 1.0
# Tensor names that carry no weights llama.cpp needs (rotary caches, FP8 scales folded on read).
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq", "_scale_inv")


class ExportError(Exception):
    """An input that cannot be exported. The message is one line that names the fix."""


@dataclass(frozen=True)
class TensorPlan:
    """One GGUF tensor: its name, NumPy (row-major) shape, and how to read it as float32."""

    name: str
    shape: tuple[int, ...]
    load: Callable[[], np.ndarray]
    keep_f32: bool = False


@dataclass(frozen=True)
class Vocabulary:
    """The tokenizer metadata llama.cpp's gpt2 tokenizer reads."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int | None
    eos_id: int | None
    add_bos: bool
    add_eos: bool


@dataclass(frozen=True)
class ExportSummary:
    path: Path
    tensors: int
    bytes: int
    mtp_modules_left_out: int


# ---------------------------------------------------------------- config checks


def load_config(model_dir: Path) -> ModelConfig:
    """Read config.json and reject what llama.cpp's deepseek2 cannot run the same way."""
    if not model_dir.exists():
        raise ExportError(f"checkpoint directory not found: {model_dir}")
    if not model_dir.is_dir():
        raise ExportError(f"not a directory: {model_dir}. Pass a checkpoint directory with config.json")
    config_path = model_dir / "config.json"
    try:
        raw = read_config_json(config_path)
    except MiniLLMError as exc:
        raise ExportError(str(exc)) from None
    if raw.get("engram") is not None:
        raise ExportError(
            f"cannot export {model_dir}: config.json has an 'engram' block (Engram n-gram memory), "
            f"which llama.cpp has no counterpart for. Export the Engram-off baseline {ENGRAM_BASELINE} instead"
        )
    try:
        config = ModelConfig.from_dict(raw)
    except MiniLLMError as exc:
        raise ExportError(f"{config_path}: {exc}") from None
    check_llama_cpp_support(config)
    return config


def check_llama_cpp_support(config: ModelConfig) -> None:
    """Raise ExportError for settings llama.cpp's deepseek2 would compute differently."""
    if config.n_routed_experts is not None:
        if config.moe_layer_freq != 1:
            raise ExportError(
                f"moe_layer_freq={config.moe_layer_freq} is not supported: llama.cpp's deepseek2 makes every "
                "layer after first_k_dense_replace an MoE layer"
            )
        if config.n_shared_experts < 1:
            raise ExportError("n_shared_experts=0 is not supported: llama.cpp's deepseek2 requires shared experts")
        if config.topk_method == "group_limited_greedy" and config.topk_group < config.n_group:
            raise ExportError(
                "topk_method 'group_limited_greedy' is not supported: llama.cpp scores an expert group by "
                "the sum of its two best experts (noaux_tc), not by its best expert"
            )
    rope = config.rope
    if rope.rope_type != "yarn":
        return
    if not rope.truncate:
        raise ExportError("rope_scaling.truncate=false is not supported: llama.cpp rounds the YaRN ramp bounds")
    if (rope.beta_fast, rope.beta_slow) != (LLAMA_CPP_YARN_BETA_FAST, LLAMA_CPP_YARN_BETA_SLOW):
        raise ExportError(
            f"rope_scaling beta_fast={rope.beta_fast} beta_slow={rope.beta_slow} is not supported: "
            f"llama.cpp's deepseek2 always uses {LLAMA_CPP_YARN_BETA_FAST:g} and {LLAMA_CPP_YARN_BETA_SLOW:g}"
        )
    if rope.attention_factor is not None and rope.attention_factor != 1.0:
        raise ExportError(
            f"rope_scaling.attention_factor={rope.attention_factor} is not supported: llama.cpp would apply it "
            "to the attention scale as well as to the rotation"
        )
    if not rope.mscale_all_dim or rope.mscale != rope.mscale_all_dim:
        raise ExportError(
            f"YaRN with mscale={rope.mscale} and mscale_all_dim={rope.mscale_all_dim} is not supported: "
            "llama.cpp's deepseek2 matches transformers only when both are set and equal"
        )


# ---------------------------------------------------------------- tokenizer


def read_vocabulary(model_dir: Path, config: ModelConfig) -> Vocabulary:
    """Read tokenizer.json (a byte-level BPE) as llama.cpp's gpt2 tokenizer metadata."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ExportError(f"tokenizer.json not found in {model_dir}, and llama.cpp needs the vocabulary in the GGUF file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model = data["model"]
        vocab: dict[str, int] = model["vocab"]
        raw_merges = model.get("merges", [])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ExportError(f"{path} is not a valid tokenizer.json ({exc})") from None

    if model.get("type") != "BPE":
        raise ExportError(f"{path}: tokenizer model {model.get('type')!r} is not supported, expected a byte-level BPE")
    pre = data.get("pre_tokenizer") or {}
    if pre.get("type") != "ByteLevel" or pre.get("use_regex", True) is not True or pre.get("add_prefix_space"):
        raise ExportError(
            f"{path}: pre-tokenizer {json.dumps(pre)} is not supported, expected ByteLevel with use_regex=true "
            "and add_prefix_space=false, which is llama.cpp's gpt-2 pre-tokenizer"
        )
    if data.get("normalizer") is not None:
        raise ExportError(f"{path}: a normalizer is not supported, because llama.cpp's gpt2 tokenizer has none")

    size = config.vocab_size
    tokens: list[str | None] = [None] * size
    types = [0] * size
    for text, token_id in vocab.items():
        _place_token(tokens, types, text, token_id, gguf_token_type("NORMAL"), path)
    for added in data.get("added_tokens", []):
        kind = gguf_token_type("CONTROL" if added.get("special") else "USER_DEFINED")
        _place_token(tokens, types, added["content"], added["id"], kind, path, replace=True)
    unused = gguf_token_type("UNUSED")
    for token_id, text in enumerate(tokens):
        if text is None:
            tokens[token_id] = f"[PAD{token_id}]"
            types[token_id] = unused

    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in raw_merges]
    settings = _read_tokenizer_config(model_dir)
    return Vocabulary(
        tokens=tokens,
        token_types=types,
        merges=merges,
        bos_id=config.bos_token_id,
        eos_id=config.eos_token_ids[0] if config.eos_token_ids else None,
        add_bos=bool(settings.get("add_bos_token", config.bos_token_id is not None)),
        add_eos=bool(settings.get("add_eos_token", False)),
    )


def _place_token(tokens: list, types: list, text: str, token_id: int, kind: int, path: Path,
                 replace: bool = False) -> None:
    if not (isinstance(token_id, int) and 0 <= token_id < len(tokens)):
        raise ExportError(f"{path}: token {text!r} has id {token_id!r}, outside the vocab_size {len(tokens)} of config.json")
    if tokens[token_id] is not None and not replace and tokens[token_id] != text:
        raise ExportError(f"{path}: tokens {tokens[token_id]!r} and {text!r} share id {token_id}")
    tokens[token_id] = text
    types[token_id] = kind


def _read_tokenizer_config(model_dir: Path) -> dict:
    path = model_dir / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path} is not valid JSON ({exc})") from None
    return settings if isinstance(settings, dict) else {}


def gguf_token_type(name: str) -> int:
    import gguf

    return int(gguf.TokenType[name])


# ---------------------------------------------------------------- tensors


def open_checkpoint(model_dir: Path, config: ModelConfig) -> tuple[Checkpoint, int]:
    """Open the weights, check names and shapes against the config, and count stored MTP modules."""
    try:
        checkpoint = Checkpoint(model_dir)
    except MiniLLMError as exc:
        raise ExportError(str(exc)) from None
    names = {name for name in checkpoint.names if not name.endswith(_IGNORED_SUFFIXES)}
    mtp_modules = stored_mtp_modules(config, names)
    shapes, optional = expected_shapes(config, names, mtp_modules)
    missing = sorted(set(shapes) - names - optional)
    unexpected = sorted(names - set(shapes))
    misshaped = [f"{name} {list(checkpoint.shape(name))} (expected {list(shapes[name])})"
                 for name in sorted(names & set(shapes)) if checkpoint.shape(name) != shapes[name]]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("with a wrong shape", misshaped)):
        if items:
            checkpoint.close()
            listed = ", ".join(items[:4]) + (f" and {len(items) - 4} more" if len(items) > 4 else "")
            raise ExportError(f"weights in {model_dir} do not match config.json: {len(items)} tensors {label}: {listed}")
    return checkpoint, mtp_modules


def plan_tensors(config: ModelConfig, checkpoint: Checkpoint) -> list[TensorPlan]:
    """List every GGUF tensor in file order, each with a loader that reads it when written."""
    D, V = config.hidden_size, config.vocab_size
    plans = [TensorPlan("token_embd.weight", (V, D), _reader(checkpoint, "model.embed_tokens.weight"))]
    for layer in range(config.num_hidden_layers):
        plans += _layer_plans(config, checkpoint, layer)
    plans.append(TensorPlan("output_norm.weight", (D,), _reader(checkpoint, "model.norm.weight"), keep_f32=True))
    # With tied embeddings llama.cpp reuses token_embd for the output projection.
    if not config.tie_word_embeddings and "lm_head.weight" in checkpoint.names:
        plans.append(TensorPlan("output.weight", (V, D), _reader(checkpoint, "lm_head.weight")))
    return plans


def _reader(checkpoint: Checkpoint, name: str) -> Callable[[], np.ndarray]:
    return lambda: checkpoint.tensor(name)


def _layer_plans(config: ModelConfig, checkpoint: Checkpoint, layer: int) -> list[TensorPlan]:
    hf, blk = f"model.layers.{layer}", f"blk.{layer}"
    D, H, C = config.hidden_size, config.num_attention_heads, config.kv_lora_rank
    N, Vh = config.qk_nope_head_dim, config.v_head_dim

    def plan(name: str, source: str, keep_f32: bool = False) -> TensorPlan:
        return TensorPlan(f"{blk}.{name}", checkpoint.shape(f"{hf}.{source}"), _reader(checkpoint, f"{hf}.{source}"),
                          keep_f32)

    plans = [plan("attn_norm.weight", "input_layernorm.weight", keep_f32=True)]
    if config.q_lora_rank is None:
        plans.append(plan("attn_q.weight", "self_attn.q_proj.weight"))
    else:
        plans += [
            plan("attn_q_a.weight", "self_attn.q_a_proj.weight"),
            plan("attn_q_a_norm.weight", "self_attn.q_a_layernorm.weight", keep_f32=True),
            plan("attn_q_b.weight", "self_attn.q_b_proj.weight"),
        ]
    plans += [
        plan("attn_kv_a_mqa.weight", "self_attn.kv_a_proj_with_mqa.weight"),
        plan("attn_kv_a_norm.weight", "self_attn.kv_a_layernorm.weight", keep_f32=True),
    ]

    # kv_b_proj rows are grouped per head: N rows that make the key, then V rows that make the value.
    kv_b_name = f"{hf}.self_attn.kv_b_proj.weight"

    def per_head_kv_b() -> np.ndarray:
        return checkpoint.tensor(kv_b_name).reshape(H, N + Vh, C)

    plans += [
        TensorPlan(f"{blk}.attn_k_b.weight", (H, C, N), lambda: np.ascontiguousarray(per_head_kv_b()[:, :N, :].transpose(0, 2, 1))),
        TensorPlan(f"{blk}.attn_v_b.weight", (H, Vh, C), lambda: np.ascontiguousarray(per_head_kv_b()[:, N:, :])),
        plan("attn_output.weight", "self_attn.o_proj.weight"),
        plan("ffn_norm.weight", "post_attention_layernorm.weight", keep_f32=True),
    ]

    if not config.is_moe_layer(layer):
        return plans + [
            plan("ffn_gate.weight", "mlp.gate_proj.weight"),
            plan("ffn_up.weight", "mlp.up_proj.weight"),
            plan("ffn_down.weight", "mlp.down_proj.weight"),
        ]

    E, F = config.n_routed_experts, config.moe_intermediate_size
    plans.append(plan("ffn_gate_inp.weight", "mlp.gate.weight", keep_f32=True))
    if config.uses_correction_bias:
        plans.append(TensorPlan(f"{blk}.exp_probs_b.bias", (E,), _reader(checkpoint, f"{hf}.mlp.gate.e_score_correction_bias"),
                                keep_f32=True))
    load_gate, load_up, load_down = _stacked_experts(checkpoint, f"{hf}.mlp", E, F)
    plans += [
        TensorPlan(f"{blk}.ffn_gate_exps.weight", (E, F, D), load_gate),
        TensorPlan(f"{blk}.ffn_up_exps.weight", (E, F, D), load_up),
        TensorPlan(f"{blk}.ffn_down_exps.weight", (E, D, F), load_down),
        plan("ffn_gate_shexp.weight", "mlp.shared_experts.gate_proj.weight"),
        plan("ffn_up_shexp.weight", "mlp.shared_experts.up_proj.weight"),
        plan("ffn_down_shexp.weight", "mlp.shared_experts.down_proj.weight"),
    ]
    return plans


def _stacked_experts(checkpoint: Checkpoint, mlp: str, experts: int, width: int):
    """Loaders for the routed experts' gate (E, F, D), up (E, F, D) and down (E, D, F) stacks, from
    per-expert tensors or from transformers v5's fused gate_up_proj (gate rows first)."""
    if f"{mlp}.experts.gate_up_proj" in checkpoint.names:
        fused, down = f"{mlp}.experts.gate_up_proj", f"{mlp}.experts.down_proj"
        return (lambda: np.ascontiguousarray(checkpoint.tensor(fused)[:, :width, :]),
                lambda: np.ascontiguousarray(checkpoint.tensor(fused)[:, width:, :]),
                lambda: checkpoint.tensor(down))

    def stack(projection: str) -> Callable[[], np.ndarray]:
        names = [f"{mlp}.experts.{e}.{projection}.weight" for e in range(experts)]
        return lambda: np.stack([checkpoint.tensor(name) for name in names])

    return stack("gate_proj"), stack("up_proj"), stack("down_proj")


# ---------------------------------------------------------------- writing


def write_metadata(writer, config: ModelConfig, vocabulary: Vocabulary, name: str, outtype: str) -> None:
    """Add the general, deepseek2 and tokenizer keys."""
    import gguf

    writer.add_name(name)
    writer.add_file_type(_file_type(outtype))
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)

    # Attention: the latent cache is one shared key/value head (see the module docstring).
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(1)
    # q_lora_rank 0 makes llama.cpp load a single attn_q, as for DeepSeek-V2-Lite.
    # NOTE: read in llama.cpp's loader but not run, because no checkpoint here lacks q_lora_rank.
    writer.add_q_lora_rank(config.q_lora_rank or 0)
    writer.add_kv_lora_rank(config.kv_lora_rank)
    writer.add_key_length(config.kv_lora_rank + config.qk_rope_head_dim)
    writer.add_value_length(config.kv_lora_rank)
    writer.add_key_length_mla(config.qk_head_dim)
    writer.add_value_length_mla(config.v_head_dim)
    _write_rope(writer, config)

    # Feed-forward: leading dense layers, then MoE layers.
    if config.n_routed_experts is None:
        writer.add_leading_dense_block_count(config.num_hidden_layers)
        writer.add_expert_feed_forward_length(config.intermediate_size)
        writer.add_expert_shared_count(0)
    else:
        writer.add_leading_dense_block_count(config.first_k_dense_replace)
        writer.add_expert_feed_forward_length(config.moe_intermediate_size)
        writer.add_expert_count(config.n_routed_experts)
        writer.add_expert_used_count(config.num_experts_per_tok)
        writer.add_expert_shared_count(config.n_shared_experts)
        writer.add_expert_weights_scale(config.routed_scaling_factor)
        writer.add_expert_weights_norm(config.norm_topk_prob)
        gating = gguf.ExpertGatingFuncType.SIGMOID if config.scoring_func == "sigmoid" else gguf.ExpertGatingFuncType.SOFTMAX
        writer.add_expert_gating_func(gating)
        # Keeping every group is the same as having none, and llama.cpp asserts topk_group < n_group.
        if config.uses_groups and 1 < config.n_group and config.topk_group < config.n_group:
            writer.add_expert_group_count(config.n_group)
            writer.add_expert_group_used_count(config.topk_group)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(vocabulary.tokens)
    writer.add_token_types(vocabulary.token_types)
    writer.add_token_merges(vocabulary.merges)
    if vocabulary.bos_id is not None:
        writer.add_bos_token_id(vocabulary.bos_id)
    if vocabulary.eos_id is not None:
        writer.add_eos_token_id(vocabulary.eos_id)
    writer.add_add_bos_token(vocabulary.add_bos)
    writer.add_add_eos_token(vocabulary.add_eos)


def _write_rope(writer, config: ModelConfig) -> None:
    import gguf

    rope = config.rope
    writer.add_rope_dimension_count(config.qk_rope_head_dim)
    writer.add_rope_freq_base(rope.theta)
    if rope.rope_type != "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.NONE)
        return
    writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    writer.add_rope_scaling_factor(rope.factor)
    writer.add_rope_scaling_orig_ctx_len(rope.original_max_position_embeddings)
    writer.add_rope_scaling_yarn_beta_fast(rope.beta_fast)
    writer.add_rope_scaling_yarn_beta_slow(rope.beta_slow)
    # llama.cpp's deepseek2 loader divides this key by 0.1 to get mscale_all_dim back.
    writer.add_rope_scaling_yarn_log_mul(0.1 * rope.mscale_all_dim)


def _file_type(outtype: str) -> int:
    import gguf

    return int({"f32": gguf.LlamaFileType.ALL_F32, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
                "f16": gguf.LlamaFileType.MOSTLY_F16}[outtype])


def _storage(plan: TensorPlan, outtype: str):
    """The GGML type of a tensor and a function that turns float32 values into its stored array."""
    import gguf

    kind = "f32" if plan.keep_f32 or len(plan.shape) == 1 else outtype
    if kind == "bf16":
        return gguf.GGMLQuantizationType.BF16, np.dtype(np.uint16), f32_to_bf16
    if kind == "f16":
        return gguf.GGMLQuantizationType.F16, np.dtype(np.float16), lambda values: _to_f16(plan.name, values)
    return gguf.GGMLQuantizationType.F32, np.dtype(np.float32), lambda values: values.astype(np.float32, copy=False)


def _to_f16(name: str, values: np.ndarray) -> np.ndarray:
    if np.abs(values).max(initial=0.0) > np.finfo(np.float16).max:
        raise ExportError(f"tensor {name} has values beyond the F16 range. Export with --outtype f32 or bf16")
    return values.astype(np.float16)


def write_gguf(path: Path, config: ModelConfig, vocabulary: Vocabulary, plans: list[TensorPlan],
               name: str, outtype: str) -> int:
    """Write the GGUF file at `path`, streaming one tensor at a time. Returns the tensor bytes."""
    import gguf

    writer = gguf.GGUFWriter(path, ARCHITECTURE)
    try:
        write_metadata(writer, config, vocabulary, name, outtype)
        converters = []
        total = 0
        for plan in plans:
            ggml_type, dtype, convert = _storage(plan, outtype)
            nbytes = int(np.prod(plan.shape)) * dtype.itemsize
            writer.add_tensor_info(plan.name, plan.shape, dtype, nbytes, raw_dtype=ggml_type)
            converters.append(convert)
            total += nbytes
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for plan, convert in zip(plans, converters):
            values = plan.load()
            if values.shape != plan.shape:
                raise ExportError(f"tensor {plan.name} has shape {values.shape}, expected {plan.shape}")
            writer.write_tensor_data(np.ascontiguousarray(convert(values)))
    finally:
        writer.close()
    return total


def export_gguf(model_dir: str | Path, out_path: str | Path, outtype: str = "f32") -> ExportSummary:
    """Export the checkpoint in `model_dir` to `out_path`. Raises ExportError on bad input."""
    model_dir, out_path = Path(model_dir), Path(out_path)
    if outtype not in OUTTYPES:
        raise ExportError(f"invalid outtype {outtype!r}: use one of {', '.join(OUTTYPES)}")
    if out_path.is_dir():
        raise ExportError(f"output path {out_path} is a directory. Name a .gguf file")
    if not out_path.parent.is_dir():
        raise ExportError(f"output directory not found: {out_path.parent}")

    config = load_config(model_dir)
    vocabulary = read_vocabulary(model_dir, config)
    checkpoint, mtp_modules = open_checkpoint(model_dir, config)
    try:
        plans = plan_tensors(config, checkpoint)
        if mtp_modules:
            logger.info("leaving out %d MTP module(s) stored after layer %d: the export covers the main model only",
                        mtp_modules, config.num_hidden_layers - 1)
        # A hidden name beside the target, so the final rename stays on one file system.
        temporary = out_path.with_name(f".{out_path.name}.{os.getpid()}.partial")
        try:
            total = write_gguf(Path(temporary), config, vocabulary, plans, model_dir.resolve().name, outtype)
            os.replace(temporary, out_path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    finally:
        checkpoint.close()
    return ExportSummary(out_path, len(plans), total, mtp_modules)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="checkpoint directory with config.json, safetensors and tokenizer.json")
    parser.add_argument("out", type=Path, help="GGUF file to write (replaced if it exists)")
    parser.add_argument("--outtype", choices=OUTTYPES, default="f32",
                        help="storage type of the weight matrices (default f32). Norms and the router stay f32")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise SystemExit("error: the gguf package is not installed. Run pip install -e '.[bench]'") from None
    try:
        summary = export_gguf(args.model_dir, args.out, args.outtype)
    except (ExportError, MiniLLMError) as exc:
        raise SystemExit(f"error: {exc}") from None
    except OSError as exc:
        raise SystemExit(f"error: cannot write {args.out}: {exc.strerror or exc}") from None
    print(f"wrote {summary.path}: {summary.tensors} tensors, {summary.bytes / 2**20:.1f} MiB of weights ({args.outtype})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
