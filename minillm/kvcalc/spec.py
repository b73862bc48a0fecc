"""ModelSpec: the attention layout of a model, as far as the KV cache is concerned."""

from __future__ import annotations

from dataclasses import dataclass

from minillm.kvcalc.formulas import LayerKind, gqa_layer, mha_layer
from minillm.kvcalc.units import KVCalcError

# KV heads of the GQA comparison figure: 8, as in every Llama-3 model from 8B to 405B.
DEFAULT_BASELINE_KV_HEADS = 8


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Per-layer cache layouts plus the head sizes used for the MHA and GQA comparison figures."""

    name: str
    model_type: str
    layers: tuple[LayerKind, ...]  # the main decoder layers, in order; MTP layers are not included
    num_attention_heads: int
    key_head_dim: int  # key size per attention head (for MLA: qk_nope_head_dim + qk_rope_head_dim)
    value_head_dim: int
    max_position_embeddings: int | None = None
    source: str = ""  # where the values come from: a config.json path or a published config's URL

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def layer_groups(self) -> list[tuple[LayerKind, int]]:
        """Distinct layer layouts with their layer counts, in order of first appearance."""
        counts: dict[LayerKind, int] = {}
        for layer in self.layers:
            counts[layer] = counts.get(layer, 0) + 1
        return list(counts.items())


@dataclass(frozen=True, slots=True)
class Baselines:
    """Bytes per token of an MHA and a GQA model with this model's layer count and head sizes."""

    mha_bytes_per_token: float
    gqa_bytes_per_token: float
    gqa_kv_heads: int

    def to_dict(self) -> dict:
        return {"mha_bytes_per_token": self.mha_bytes_per_token,
                "gqa_bytes_per_token": self.gqa_bytes_per_token,
                "gqa_kv_heads": self.gqa_kv_heads}


def baseline_bytes_per_token(spec: ModelSpec, kv_bytes: float = 1,
                             gqa_kv_heads: int = DEFAULT_BASELINE_KV_HEADS) -> Baselines:
    """Compute what the same layers would cache per token under plain MHA and under GQA.

    Both baselines keep a key and a value per KV head for every token, at `kv_bytes` per value.
    The GQA head count is capped at the model's query head count.
    """
    if isinstance(gqa_kv_heads, bool) or not isinstance(gqa_kv_heads, int) or gqa_kv_heads < 1:
        raise KVCalcError(f"invalid gqa_kv_heads {gqa_kv_heads!r}: use a positive integer such as 8")
    kv_heads = min(gqa_kv_heads, spec.num_attention_heads)
    mha = mha_layer(spec.num_attention_heads, spec.key_head_dim, spec.value_head_dim)
    gqa = gqa_layer(kv_heads, spec.key_head_dim, spec.value_head_dim)
    return Baselines(mha_bytes_per_token=spec.num_layers * mha.kv_values * kv_bytes,
                     gqa_bytes_per_token=spec.num_layers * gqa.kv_values * kv_bytes,
                     gqa_kv_heads=kv_heads)
