"""Build a ModelSpec from a Hugging Face config.json.

Only the keys that decide the KV cache are read, so this accepts configs that the engine itself
cannot run (GQA models, DeepSeek-V3.2, DeepSeek-V4, GLM-5). Key names follow the checkpoints'
published config.json files and transformers' config classes of the same model_type.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from minillm.config import read_config_json
from minillm.errors import ConfigError
from minillm.kvcalc.formulas import (LayerKind, csa_layer, gqa_layer, hca_layer, mha_layer, mla_layer,
                                     sliding_layer)
from minillm.kvcalc.spec import ModelSpec

MLA_MODEL_TYPES = ("deepseek_v2", "deepseek_v3")
DSA_MODEL_TYPES = ("deepseek_v32", "glm_moe_dsa")
V4_MODEL_TYPES = ("deepseek_v4",)
GQA_MODEL_TYPES = ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe")
SUPPORTED_MODEL_TYPES = MLA_MODEL_TYPES + DSA_MODEL_TYPES + V4_MODEL_TYPES + GQA_MODEL_TYPES

# Qwen2/Qwen3 make the layers from max_window_layers on sliding when use_sliding_window is true.
_QWEN_MODEL_TYPES = ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe")
# Mistral and Mixtral apply sliding_window, when set, to every layer.
_MISTRAL_MODEL_TYPES = ("mistral", "mixtral")

# DeepSeek-V4 compress_ratios entries: 0 = sliding window only, 4 = CSA, 128 = HCA.
_V4_RATIO_KINDS = {0: "sliding_attention", 4: "compressed_sparse_attention", 128: "heavily_compressed_attention"}
_V4_DEFAULT_RATES = {"compressed_sparse_attention": 4, "heavily_compressed_attention": 128}

_MISSING = object()


def read_config_file(path: str | os.PathLike) -> ModelSpec:
    """Read a checkpoint directory's config.json (or a config.json file) into a ModelSpec."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    raw = read_config_json(path)
    return spec_from_config(raw, name=directory.resolve().name, source=str(path if path.is_file() else path / "config.json"))


def spec_from_config(raw: Any, name: str | None = None, source: str = "") -> ModelSpec:
    """Build a ModelSpec from a parsed config.json; raise ConfigError for unsupported model types."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config.json must contain a JSON object, found {type(raw).__name__}")
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(f"unsupported model_type {model_type!r} for the KV calculator: "
                          f"supported model types are {', '.join(SUPPORTED_MODEL_TYPES)}")
    if model_type in V4_MODEL_TYPES:
        layers, key_dim, value_dim = _v4_layers(raw, model_type)
    elif model_type in GQA_MODEL_TYPES:
        layers, key_dim, value_dim = _gqa_layers(raw, model_type)
    else:
        layers, key_dim, value_dim = _mla_layers(raw, model_type)
    max_positions = raw.get("max_position_embeddings")
    return ModelSpec(
        name=name or model_type,
        model_type=model_type,
        layers=layers,
        num_attention_heads=_positive_int(raw, "num_attention_heads", model_type),
        key_head_dim=key_dim,
        value_head_dim=value_dim,
        max_position_embeddings=max_positions if _is_int(max_positions) and max_positions > 0 else None,
        source=source,
    )


def _mla_layers(raw: dict, model_type: str) -> tuple[tuple[LayerKind, ...], int, int]:
    count = _positive_int(raw, "num_hidden_layers", model_type)
    kv_lora_rank = _positive_int(raw, "kv_lora_rank", model_type)
    rope_dim = _positive_int(raw, "qk_rope_head_dim", model_type)
    nope_dim = _positive_int(raw, "qk_nope_head_dim", model_type)
    value_dim = _positive_int(raw, "v_head_dim", model_type)
    index_dim = _positive_int(raw, "index_head_dim", model_type) if model_type in DSA_MODEL_TYPES else 0
    with_indexer = _glm_indexer_layers(raw, count) if model_type == "glm_moe_dsa" else [True] * count
    layers = tuple(mla_layer(kv_lora_rank, rope_dim, index_dim if indexed else 0) for indexed in with_indexer)
    return layers, nope_dim + rope_dim, value_dim


def _glm_indexer_layers(raw: dict, count: int) -> list[bool]:
    """Return, for each GLM-MoE-DSA layer, whether it runs its own indexer and so caches indexer keys.

    A "shared" layer reuses the top-k selection of the last "full" layer, so it caches no
    indexer keys. The schedule comes from indexer_types, else index_topk_pattern (a string of
    F and S), else index_topk_freq and index_skip_topk_offset, by the rule of transformers'
    GlmMoeDsaConfig: layer i is full when max(i - offset + 1, 0) is a multiple of freq.
    Without any of these keys every layer is full, as in GLM-5.
    """
    names = raw.get("indexer_types")
    if names is None:
        pattern = raw.get("index_topk_pattern")
        if isinstance(pattern, str):
            pattern = [{"F": "full", "S": "shared"}.get(letter, letter) for letter in pattern]
        names = pattern
    if names is not None:
        if not isinstance(names, list) or len(names) != count or any(n not in ("full", "shared") for n in names):
            raise ConfigError(f"invalid config value indexer_types={names!r}: expected a list of {count} "
                              f"entries (num_hidden_layers), each 'full' or 'shared'")
        return [n == "full" for n in names]
    freq = max(_int(raw, "index_topk_freq", "glm_moe_dsa", default=1), 1)
    offset = _int(raw, "index_skip_topk_offset", "glm_moe_dsa", default=2)
    return [max(i - offset + 1, 0) % freq == 0 for i in range(count)]


def _gqa_layers(raw: dict, model_type: str) -> tuple[tuple[LayerKind, ...], int, int]:
    count = _positive_int(raw, "num_hidden_layers", model_type)
    heads = _positive_int(raw, "num_attention_heads", model_type)
    kv_heads = _int(raw, "num_key_value_heads", model_type, default=heads)
    if not 1 <= kv_heads <= heads or heads % kv_heads:
        raise ConfigError(f"invalid config value num_key_value_heads={kv_heads!r}: expected a divisor "
                          f"of num_attention_heads ({heads})")
    head_dim = _int(raw, "head_dim", model_type, default=None)
    if head_dim is None:
        head_dim = _positive_int(raw, "hidden_size", model_type) // heads
    if head_dim < 1:
        raise ConfigError(f"invalid config value head_dim={head_dim!r}: expected a positive integer")

    full = mha_layer(heads, head_dim, head_dim) if kv_heads == heads else gqa_layer(kv_heads, head_dim, head_dim)
    sliding_types = _gqa_layer_types(raw, model_type, count)
    if not any(sliding_types):
        return (full,) * count, head_dim, head_dim

    window = _int(raw, "sliding_window", model_type, default=0)
    if window < 1:
        raise ConfigError(f"invalid config value sliding_window={raw.get('sliding_window')!r}: expected a "
                          f"positive integer, because some layers of this {model_type} config use sliding attention")
    sliding = sliding_layer(window, full.kv_values, f"{kv_heads} KV heads x (K {head_dim} + V {head_dim})")
    return tuple(sliding if is_sliding else full for is_sliding in sliding_types), head_dim, head_dim


def _gqa_layer_types(raw: dict, model_type: str, count: int) -> list[bool]:
    """Return, for each layer, whether it uses sliding-window attention."""
    layer_types = raw.get("layer_types")
    if layer_types is not None:
        if (not isinstance(layer_types, list) or len(layer_types) != count
                or any(t not in ("full_attention", "sliding_attention") for t in layer_types)):
            raise ConfigError(f"unsupported config value layer_types={layer_types!r}: the KV calculator expects "
                              f"{count} entries, each 'full_attention' or 'sliding_attention'")
        return [t == "sliding_attention" for t in layer_types]
    window = raw.get("sliding_window")
    has_window = _is_int(window) and window > 0
    if model_type in _QWEN_MODEL_TYPES and raw.get("use_sliding_window") and has_window:
        first_sliding = _int(raw, "max_window_layers", model_type, default=count)
        return [i >= first_sliding for i in range(count)]
    if model_type in _MISTRAL_MODEL_TYPES and has_window:
        return [True] * count
    return [False] * count


def _v4_layers(raw: dict, model_type: str) -> tuple[tuple[LayerKind, ...], int, int]:
    count = _positive_int(raw, "num_hidden_layers", model_type)
    head_dim = _positive_int(raw, "head_dim", model_type)
    window = _positive_int(raw, "sliding_window", model_type)
    index_dim = _positive_int(raw, "index_head_dim", model_type)

    ratios = raw.get("compress_ratios")
    if ratios is not None:
        # compress_ratios may carry extra entries after the main layers, for the MTP modules.
        if (not isinstance(ratios, list) or len(ratios) < count
                or any(not _is_int(r) or r not in _V4_RATIO_KINDS for r in ratios[:count])):
            raise ConfigError(f"invalid config value compress_ratios={ratios!r}: expected a list of at least "
                              f"{count} entries (num_hidden_layers), each 0, 4 or 128")
        names = [_V4_RATIO_KINDS[r] for r in ratios[:count]]
        rates = _V4_DEFAULT_RATES
    elif isinstance(raw.get("layer_types"), list):
        names = raw["layer_types"][:count]
        if len(names) < count or any(n not in _V4_RATIO_KINDS.values() for n in names):
            raise ConfigError(f"invalid config value layer_types={raw['layer_types']!r}: expected {count} entries, "
                              f"each one of {', '.join(_V4_RATIO_KINDS.values())}")
        custom_rates = raw.get("compress_rates") or {}
        if not isinstance(custom_rates, dict) or any(not _is_int(r) or r < 1 for r in custom_rates.values()):
            raise ConfigError(f"invalid config value compress_rates={raw.get('compress_rates')!r}: "
                              f"expected an object of positive integers")
        rates = {**_V4_DEFAULT_RATES, **custom_rates}
    else:
        raise ConfigError("config.json of a deepseek_v4 model needs compress_ratios (or layer_types) "
                          "to tell the attention kind of each layer")

    kinds = {
        "sliding_attention": sliding_layer(window, head_dim, f"{head_dim}"),
        "compressed_sparse_attention": csa_layer(rates["compressed_sparse_attention"], head_dim, index_dim, window),
        "heavily_compressed_attention": hca_layer(rates["heavily_compressed_attention"], head_dim, window),
    }
    return tuple(kinds[name] for name in names), head_dim, head_dim


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(raw: dict, key: str, model_type: str, default: Any = _MISSING) -> Any:
    value = raw.get(key)
    if value is None:
        if default is _MISSING:
            raise ConfigError(f"config.json is missing the required key {key!r} for model_type {model_type!r}")
        return default
    if not _is_int(value):
        raise ConfigError(f"invalid config value {key}={value!r}: expected an integer")
    return value


def _positive_int(raw: dict, key: str, model_type: str) -> int:
    value = _int(raw, key, model_type)
    if value < 1:
        raise ConfigError(f"invalid config value {key}={value!r}: expected a positive integer")
    return value
