"""kv_cache_size(): the KV cache of a model at a context length, broken down by layer type."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from minillm.config import ModelConfig
from minillm.errors import ConfigError
from minillm.kvcalc.config_reader import read_config_file, spec_from_config
from minillm.kvcalc.presets import PRESETS, get_preset
from minillm.kvcalc.spec import DEFAULT_BASELINE_KV_HEADS, Baselines, ModelSpec, baseline_bytes_per_token
from minillm.kvcalc.units import GIB, bytes_to_bits, check_token_count

# The defaults reproduce the usual long-context comparison: 8-bit KV values, 16-bit indexer keys.
DEFAULT_KV_BYTES = 1
DEFAULT_INDEXER_BYTES = 2

ModelSource = str | os.PathLike | dict | ModelSpec | ModelConfig


@dataclass(frozen=True, slots=True)
class LayerTypeUsage:
    """The cache of all layers that share one layout."""

    layer_type: str  # a kind id from minillm.kvcalc.formulas: mha, gqa, sliding, mla, mla_dsa, csa, hca
    description: str
    layers: int
    total_bytes: int  # all `layers` layers together, at the report's context length
    bytes_per_token: float  # total_bytes / context tokens; below the per-token size for windowed layers

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    def to_dict(self) -> dict:
        return {"layer_type": self.layer_type, "description": self.description, "layers": self.layers,
                "bytes_per_token": self.bytes_per_token, "total_bytes": self.total_bytes,
                "total_gib": self.total_gib}


@dataclass(frozen=True, slots=True)
class KVReport:
    """The KV cache of one sequence of `context_tokens` tokens."""

    model: str
    model_type: str
    source: str
    context_tokens: int
    kv_bytes: float
    indexer_bytes: float
    layer_types: tuple[LayerTypeUsage, ...]
    baselines: Baselines
    max_position_embeddings: int | None = None

    @property
    def layers(self) -> int:
        return sum(usage.layers for usage in self.layer_types)

    @property
    def total_bytes(self) -> int:
        return sum(usage.total_bytes for usage in self.layer_types)

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    @property
    def bytes_per_token(self) -> float:
        return self.total_bytes / self.context_tokens

    @property
    def exceeds_max_positions(self) -> bool:
        return self.max_position_embeddings is not None and self.context_tokens > self.max_position_embeddings

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "model_type": self.model_type,
            "source": self.source,
            "context_tokens": self.context_tokens,
            "kv_bytes": self.kv_bytes,
            "indexer_bytes": self.indexer_bytes,
            "layers": self.layers,
            "total_bytes": self.total_bytes,
            "total_gib": self.total_gib,
            "bytes_per_token": self.bytes_per_token,
            "max_position_embeddings": self.max_position_embeddings,
            "layer_types": [usage.to_dict() for usage in self.layer_types],
            "baselines": self.baselines.to_dict(),
        }


def resolve_spec(model: ModelSource) -> ModelSpec:
    """Turn a preset name, a checkpoint path, a parsed config.json or a ModelConfig into a ModelSpec.

    A string is a preset name when one matches, else a path. A path is a checkpoint directory or a
    config.json file. A ModelSpec is returned unchanged.
    """
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, ModelConfig):
        return spec_from_config(model.extra, name=model.model_type)
    if isinstance(model, dict):
        return spec_from_config(model)
    if isinstance(model, str) and model.strip().lower() in PRESETS:
        return get_preset(model).spec()
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.exists():
            raise ConfigError(f"{str(model)!r} is neither a preset nor an existing path: "
                              f"choose one of {', '.join(PRESETS)}, or give a checkpoint directory")
        return read_config_file(path)
    raise ConfigError(f"cannot size a KV cache from a {type(model).__name__}: give a preset name, "
                      f"a checkpoint directory, a config.json dict or a ModelSpec")


def kv_cache_size(model: ModelSource, context_tokens: int, kv_bytes: float = DEFAULT_KV_BYTES,
                  indexer_bytes: float = DEFAULT_INDEXER_BYTES,
                  gqa_kv_heads: int = DEFAULT_BASELINE_KV_HEADS) -> KVReport:
    """Compute the KV cache of one sequence of `context_tokens` tokens, per layer type.

    `kv_bytes` is the size of each cached key, value or latent value (2 for BF16, 1 for FP8,
    0.5 for FP4), and `indexer_bytes` that of each sparse-attention indexer key value. Both must be
    whole numbers of bits. The report also carries MHA and GQA figures for comparison, computed with
    `kv_bytes` and `gqa_kv_heads` KV heads.

    Raises ConfigError for an unknown preset or an unsupported config.json, and KVCalcError for an
    invalid context length or byte count.
    """
    spec = resolve_spec(model)
    context_tokens = check_token_count(context_tokens)
    kv_bits = bytes_to_bits(kv_bytes, "kv_bytes")
    indexer_bits = bytes_to_bits(indexer_bytes, "indexer_bytes")

    usages = []
    for kind, count in spec.layer_groups():
        bits = count * kind.cache_bits(context_tokens, kv_bits, indexer_bits)
        total = math.ceil(bits / 8)
        usages.append(LayerTypeUsage(layer_type=kind.kind, description=kind.description, layers=count,
                                     total_bytes=total, bytes_per_token=total / context_tokens))
    return KVReport(
        model=spec.name,
        model_type=spec.model_type,
        source=spec.source,
        context_tokens=context_tokens,
        kv_bytes=kv_bits / 8,
        indexer_bytes=indexer_bits / 8,
        layer_types=tuple(usages),
        baselines=baseline_bytes_per_token(spec, kv_bits / 8, gqa_kv_heads),
        max_position_embeddings=spec.max_position_embeddings,
    )


def kv_baselines(model: ModelSource, kv_bytes: float = DEFAULT_KV_BYTES,
                 gqa_kv_heads: int = DEFAULT_BASELINE_KV_HEADS) -> Baselines:
    """Compute the bytes per token of an MHA and of a GQA model with `model`'s layers and head sizes.

    A UI can show these beside the model's own figure, kv_cache_size(...).bytes_per_token.
    """
    return baseline_bytes_per_token(resolve_spec(model), bytes_to_bits(kv_bytes, "kv_bytes") / 8, gqa_kv_heads)


def preset_reports(context_tokens: int, kv_bytes: float = DEFAULT_KV_BYTES,
                   indexer_bytes: float = DEFAULT_INDEXER_BYTES) -> dict[str, KVReport]:
    """Compute one report per preset, keyed by preset name in the order of PRESETS."""
    return {name: kv_cache_size(name, context_tokens, kv_bytes, indexer_bytes) for name in PRESETS}
