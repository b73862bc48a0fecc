"""Map a Hugging Face DeepseekV2/V3 checkpoint onto ModelWeights, checking every tensor name and shape.

Names follow transformers and DeepSeek's released files: `model.embed_tokens.weight`,
`model.layers.{L}.self_attn.kv_a_proj_with_mqa.weight`, per-expert
`model.layers.{L}.mlp.experts.{e}.gate_proj.weight`, and so on. transformers v5 fuses experts in
memory (`mlp.experts.gate_up_proj` (E, 2F, D), `mlp.experts.down_proj` (E, D, F)); both spellings
load. MTP modules are layers num_hidden_layers .. num_hidden_layers + num_nextn_predict_layers - 1.
"""

from __future__ import annotations

import logging
import re

import numpy as np

from minillm.config import ModelConfig
from minillm.errors import CheckpointError
from minillm.io.engram_weights import engram_shapes, load_engram
from minillm.io.safetensors import Checkpoint
from minillm.memory.expert_cache import ExpertCache, StackedExperts, StreamedExperts
from minillm.model.mla import AttentionWeights
from minillm.model.moe import MoEWeights
from minillm.model.transformer import DenseWeights, LayerWeights, ModelWeights, MTPWeights

log = logging.getLogger(__name__)

# Names some exporters leave in checkpoints that carry no weights the engine needs.
_IGNORED = re.compile(r"(\.rotary_emb\.inv_freq|_scale_inv)$")


def _attention_shapes(cfg: ModelConfig, p: str) -> dict[str, tuple[int, ...]]:
    H, D = cfg.num_attention_heads, cfg.hidden_size
    shapes = {
        f"{p}.self_attn.kv_a_proj_with_mqa.weight": (cfg.latent_dim, D),
        f"{p}.self_attn.kv_a_layernorm.weight": (cfg.kv_lora_rank,),
        f"{p}.self_attn.kv_b_proj.weight": (H * (cfg.qk_nope_head_dim + cfg.v_head_dim), cfg.kv_lora_rank),
        f"{p}.self_attn.o_proj.weight": (D, H * cfg.v_head_dim),
    }
    if cfg.q_lora_rank is None:
        shapes[f"{p}.self_attn.q_proj.weight"] = (H * cfg.qk_head_dim, D)
    else:
        shapes[f"{p}.self_attn.q_a_proj.weight"] = (cfg.q_lora_rank, D)
        shapes[f"{p}.self_attn.q_a_layernorm.weight"] = (cfg.q_lora_rank,)
        shapes[f"{p}.self_attn.q_b_proj.weight"] = (H * cfg.qk_head_dim, cfg.q_lora_rank)
    return shapes


def _ffn_shapes(cfg: ModelConfig, p: str, moe: bool, fused: bool) -> dict[str, tuple[int, ...]]:
    D = cfg.hidden_size
    if not moe:
        F = cfg.intermediate_size
        return {f"{p}.mlp.gate_proj.weight": (F, D), f"{p}.mlp.up_proj.weight": (F, D),
                f"{p}.mlp.down_proj.weight": (D, F)}
    E, F = cfg.n_routed_experts, cfg.moe_intermediate_size
    shapes = {f"{p}.mlp.gate.weight": (E, D)}
    if cfg.uses_correction_bias:
        shapes[f"{p}.mlp.gate.e_score_correction_bias"] = (E,)
    if fused:
        shapes[f"{p}.mlp.experts.gate_up_proj"] = (E, 2 * F, D)
        shapes[f"{p}.mlp.experts.down_proj"] = (E, D, F)
    else:
        for e in range(E):
            shapes[f"{p}.mlp.experts.{e}.gate_proj.weight"] = (F, D)
            shapes[f"{p}.mlp.experts.{e}.up_proj.weight"] = (F, D)
            shapes[f"{p}.mlp.experts.{e}.down_proj.weight"] = (D, F)
    if cfg.n_shared_experts:
        S = cfg.n_shared_experts * F
        shapes[f"{p}.mlp.shared_experts.gate_proj.weight"] = (S, D)
        shapes[f"{p}.mlp.shared_experts.up_proj.weight"] = (S, D)
        shapes[f"{p}.mlp.shared_experts.down_proj.weight"] = (D, S)
    return shapes


def stored_mtp_modules(cfg: ModelConfig, names: set[str]) -> int:
    """Count the config's MTP modules that the checkpoint stores. transformers' save_pretrained
    drops them while keeping num_nextn_predict_layers, so absent modules are allowed."""
    count = 0
    while count < cfg.num_nextn_predict_layers:
        prefix = f"model.layers.{cfg.num_hidden_layers + count}."
        if not any(name.startswith(prefix) for name in names):
            break
        count += 1
    return count


def expected_shapes(cfg: ModelConfig, names: set[str], mtp_modules: int | None = None
                    ) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """Required tensor shapes for this config, and the optional names (may be absent).

    `names` are the checkpoint's tensor names: they tell whether experts are fused and, unless
    `mtp_modules` is given, how many MTP modules are stored."""
    if mtp_modules is None:
        mtp_modules = stored_mtp_modules(cfg, names)
    D, V = cfg.hidden_size, cfg.vocab_size
    shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,), "lm_head.weight": (V, D)}
    optional = set()
    if cfg.tie_word_embeddings:
        optional.add("lm_head.weight")

    for layer in range(cfg.num_hidden_layers + mtp_modules):
        p = f"model.layers.{layer}"
        fused = f"{p}.mlp.experts.gate_up_proj" in names
        shapes[f"{p}.input_layernorm.weight"] = (D,)
        shapes[f"{p}.post_attention_layernorm.weight"] = (D,)
        shapes.update(_attention_shapes(cfg, p))
        shapes.update(_ffn_shapes(cfg, p, cfg.is_moe_layer(layer), fused))
        shapes.update(engram_shapes(cfg, layer))
        if layer >= cfg.num_hidden_layers:
            shapes.update({f"{p}.enorm.weight": (D,), f"{p}.hnorm.weight": (D,), f"{p}.eh_proj.weight": (D, 2 * D),
                           f"{p}.shared_head.norm.weight": (D,), f"{p}.embed_tokens.weight": (V, D),
                           f"{p}.shared_head.head.weight": (V, D)})
            optional |= {f"{p}.embed_tokens.weight", f"{p}.shared_head.head.weight"}
    return shapes, optional


def _check_names(cfg: ModelConfig, ckpt: Checkpoint) -> None:
    names = {n for n in ckpt.names if not _IGNORED.search(n)}
    shapes, optional = expected_shapes(cfg, names)
    missing = sorted(set(shapes) - names - optional)
    unexpected = sorted(names - set(shapes))
    misshaped = [f"{n}: checkpoint {list(ckpt.shape(n))}, config expects {list(shapes[n])}"
                 for n in sorted(names & set(shapes)) if ckpt.shape(n) != shapes[n]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_short_list(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_short_list(unexpected)}")
    if misshaped:
        problems.append(f"{len(misshaped)} with wrong shape: {_short_list(misshaped)}")
    if problems:
        raise CheckpointError(
            f"weights in {ckpt.directory} do not match its config.json ({'; '.join(problems)}); "
            "check that config.json belongs to these weights"
        )


def _short_list(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


class _Reader:
    def __init__(self, ckpt: Checkpoint):
        self.ckpt = ckpt

    def get(self, name: str) -> np.ndarray:
        return self.ckpt.tensor(name)

    def maybe(self, name: str) -> np.ndarray | None:
        return self.ckpt.tensor(name) if name in self.ckpt.names else None


def _expert_loader(cfg: ModelConfig, ckpt: Checkpoint, m: str):
    """A function expert -> ((gate, up, down) float32, bytes read from the checkpoint)."""
    F = cfg.moe_intermediate_size
    if f"{m}.experts.gate_up_proj" in ckpt.names:
        def load_fused(e: int):
            gate_up = ckpt.tensor_row(f"{m}.experts.gate_up_proj", e)  # (2F, D): gate rows first, then up
            down = ckpt.tensor_row(f"{m}.experts.down_proj", e)
            return (gate_up[:F], gate_up[F:], down), (gate_up.size + down.size) * ckpt.itemsize(f"{m}.experts.down_proj")
        return load_fused

    def load(e: int):
        names = [f"{m}.experts.{e}.{proj}.weight" for proj in ("gate_proj", "up_proj", "down_proj")]
        return tuple(ckpt.tensor(n) for n in names), sum(ckpt.nbytes(n) for n in names)
    return load


def _load_layer(cfg: ModelConfig, r: _Reader, layer: int, expert_cache: ExpertCache | None) -> LayerWeights:
    p = f"model.layers.{layer}"
    a = f"{p}.self_attn"
    attention = AttentionWeights(
        kv_a=r.get(f"{a}.kv_a_proj_with_mqa.weight"),
        kv_a_norm=r.get(f"{a}.kv_a_layernorm.weight"),
        kv_b=r.get(f"{a}.kv_b_proj.weight"),
        o=r.get(f"{a}.o_proj.weight"),
        q_a=r.maybe(f"{a}.q_a_proj.weight"),
        q_a_norm=r.maybe(f"{a}.q_a_layernorm.weight"),
        q_b=r.maybe(f"{a}.q_b_proj.weight"),
        q=r.maybe(f"{a}.q_proj.weight"),
    )
    m = f"{p}.mlp"
    if not cfg.is_moe_layer(layer):
        ffn = DenseWeights(r.get(f"{m}.gate_proj.weight"), r.get(f"{m}.up_proj.weight"), r.get(f"{m}.down_proj.weight"))
    else:
        load = _expert_loader(cfg, r.ckpt, m)
        if expert_cache is None:
            experts = [load(e)[0] for e in range(cfg.n_routed_experts)]
            source = StackedExperts(*(np.stack([ex[i] for ex in experts]) for i in range(3)))
        else:
            source = StreamedExperts(layer, expert_cache, load)
        ffn = MoEWeights(
            gate=r.get(f"{m}.gate.weight"),
            experts=source,
            bias=r.maybe(f"{m}.gate.e_score_correction_bias"),
            shared_gate=r.maybe(f"{m}.shared_experts.gate_proj.weight"),
            shared_up=r.maybe(f"{m}.shared_experts.up_proj.weight"),
            shared_down=r.maybe(f"{m}.shared_experts.down_proj.weight"),
        )
    return LayerWeights(r.get(f"{p}.input_layernorm.weight"), attention,
                        r.get(f"{p}.post_attention_layernorm.weight"), ffn, load_engram(cfg, r.ckpt, layer))


def load_weights(cfg: ModelConfig, ckpt: Checkpoint, expert_cache: ExpertCache | None = None) -> ModelWeights:
    """Check names and shapes against the config, then read every tensor as float32.

    With an expert cache, routed experts stay in the memory-mapped checkpoint and are streamed
    in on first use; the checkpoint must then stay open while the model runs."""
    _check_names(cfg, ckpt)
    r = _Reader(ckpt)
    embed = r.get("model.embed_tokens.weight")
    lm_head = r.maybe("lm_head.weight")
    weights = ModelWeights(
        embed=embed,
        layers=[_load_layer(cfg, r, layer, expert_cache) for layer in range(cfg.num_hidden_layers)],
        norm=r.get("model.norm.weight"),
        lm_head=embed if (lm_head is None or cfg.tie_word_embeddings) else lm_head,
    )
    mtp_modules = stored_mtp_modules(cfg, ckpt.names)
    if mtp_modules < cfg.num_nextn_predict_layers:
        log.info("%s stores %d of the %d MTP modules named in config.json", ckpt.directory, mtp_modules,
                 cfg.num_nextn_predict_layers)
    for k in range(mtp_modules):
        layer = cfg.num_hidden_layers + k
        p = f"model.layers.{layer}"
        weights.mtp.append(MTPWeights(
            embed_norm=r.get(f"{p}.enorm.weight"),
            hidden_norm=r.get(f"{p}.hnorm.weight"),
            eh_proj=r.get(f"{p}.eh_proj.weight"),
            block=_load_layer(cfg, r, layer, expert_cache),
            head_norm=r.get(f"{p}.shared_head.norm.weight"),
            embed=r.maybe(f"{p}.embed_tokens.weight"),
            head=r.maybe(f"{p}.shared_head.head.weight"),
        ))
    return weights
