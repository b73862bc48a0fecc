"""ModelConfig: the DeepseekV2 / DeepseekV3 hyper-parameters, read from a Hugging Face config.json.

Key names and defaults follow transformers' DeepseekV2Config and DeepseekV3Config (v5). Routing
keys that transformers' DeepseekV3 ignores (scoring_func, topk_method) are honoured here, so one
engine runs both the V2 softmax gates and the V3 sigmoid gate.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minillm.engram_config import EngramConfig, parse_engram
from minillm.errors import ConfigError

SUPPORTED_MODEL_TYPES = ("deepseek_v3", "deepseek_v2")
SCORING_FUNCS = ("softmax", "sigmoid")
TOPK_METHODS = ("greedy", "group_limited_greedy", "noaux_tc")

# Routing defaults when config.json leaves a key out, per model type. DeepseekV3 checkpoints
# route with sigmoid scores and the bias-corrected group top-k; V2 with a plain softmax top-k.
_ROUTING_DEFAULTS = {
    "deepseek_v3": {"scoring_func": "sigmoid", "topk_method": "noaux_tc", "norm_topk_prob": True},
    "deepseek_v2": {"scoring_func": "softmax", "topk_method": "greedy", "norm_topk_prob": False},
}


@dataclass(frozen=True, slots=True)
class RopeConfig:
    """Rotary embedding settings: plain RoPE (`rope_type` "default") or YaRN."""

    rope_type: str = "default"
    theta: float = 10000.0
    factor: float = 1.0
    original_max_position_embeddings: int | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: float | None = None  # explicit cos/sin magnitude; None derives it from mscale
    truncate: bool = True  # round the YaRN correction range to whole dimensions


@dataclass(frozen=True, slots=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]

    # attention (MLA)
    num_attention_heads: int
    q_lora_rank: int | None  # None: a single q_proj, as in DeepSeek-V2-Lite
    kv_lora_rank: int  # C, the latent width cached per token
    qk_nope_head_dim: int
    qk_rope_head_dim: int  # R, the shared RoPE key width cached per token
    v_head_dim: int
    rope: RopeConfig

    # feed-forward: dense layers, then MoE
    intermediate_size: int
    moe_intermediate_size: int
    n_routed_experts: int | None  # None: every layer is dense
    n_shared_experts: int
    num_experts_per_tok: int
    n_group: int
    topk_group: int
    scoring_func: str
    topk_method: str
    norm_topk_prob: bool
    routed_scaling_factor: float
    first_k_dense_replace: int
    moe_layer_freq: int

    # multi-token prediction modules stored after the main layers
    num_nextn_predict_layers: int = 0

    # Engram n-gram memory (the optional "engram" block); None for a plain DeepseekV2/V3
    engram: EngramConfig | None = None

    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        positive = {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "kv_lora_rank": self.kv_lora_rank,
            "qk_nope_head_dim": self.qk_nope_head_dim,
            "qk_rope_head_dim": self.qk_rope_head_dim,
            "v_head_dim": self.v_head_dim,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
        }
        for key, value in positive.items():
            _require(isinstance(value, int) and value > 0, key, value, "a positive integer")
        if self.q_lora_rank is not None:
            _require(self.q_lora_rank > 0, "q_lora_rank", self.q_lora_rank, "a positive integer or null")
        _require(self.qk_rope_head_dim % 2 == 0, "qk_rope_head_dim", self.qk_rope_head_dim, "an even number")
        _require(self.rms_norm_eps > 0, "rms_norm_eps", self.rms_norm_eps, "a positive number")
        _require(self.num_nextn_predict_layers >= 0, "num_nextn_predict_layers",
                 self.num_nextn_predict_layers, "zero or a positive integer")
        if self.n_routed_experts is not None:
            self._validate_moe()

    def _validate_moe(self) -> None:
        experts = self.n_routed_experts
        _require(experts > 0, "n_routed_experts", experts, "a positive integer or null")
        _require(self.moe_intermediate_size > 0, "moe_intermediate_size", self.moe_intermediate_size,
                 "a positive integer")
        _require(self.scoring_func in SCORING_FUNCS, "scoring_func", self.scoring_func,
                 f"one of {', '.join(SCORING_FUNCS)}")
        _require(self.topk_method in TOPK_METHODS, "topk_method", self.topk_method,
                 f"one of {', '.join(TOPK_METHODS)}")
        _require(1 <= self.n_group <= experts and experts % self.n_group == 0, "n_group", self.n_group,
                 f"a divisor of n_routed_experts ({experts})")
        _require(1 <= self.topk_group <= self.n_group, "topk_group", self.topk_group,
                 f"between 1 and n_group ({self.n_group})")
        reachable = self.topk_group * (experts // self.n_group) if self.uses_groups else experts
        _require(1 <= self.num_experts_per_tok <= reachable, "num_experts_per_tok", self.num_experts_per_tok,
                 f"between 1 and the {reachable} experts that routing can reach")
        if self.topk_method == "noaux_tc":
            _require(self.scoring_func == "sigmoid", "scoring_func", self.scoring_func,
                     "'sigmoid' when topk_method is 'noaux_tc'")
            _require(experts // self.n_group >= 2, "n_group", self.n_group,
                     "at most n_routed_experts / 2, because noaux_tc scores a group by its top two experts")
        _require(self.moe_layer_freq >= 1, "moe_layer_freq", self.moe_layer_freq, "a positive integer")
        _require(self.first_k_dense_replace >= 0, "first_k_dense_replace", self.first_k_dense_replace,
                 "zero or a positive integer")

    # derived sizes
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def latent_dim(self) -> int:
        """Values cached per token per layer: the latent c plus the shared RoPE key."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def uses_groups(self) -> bool:
        return self.topk_method in ("group_limited_greedy", "noaux_tc")

    @property
    def uses_correction_bias(self) -> bool:
        return self.n_routed_experts is not None and self.topk_method == "noaux_tc"

    def is_moe_layer(self, layer: int) -> bool:
        """MoE or dense FFN, by the rule of DeepSeek's reference code (layer ids from 0)."""
        return (
            self.n_routed_experts is not None
            and layer >= self.first_k_dense_replace
            and layer % self.moe_layer_freq == 0
        )

    @property
    def softmax_scale(self) -> float:
        """Attention logit scale: (dn + dr)^-1/2, times m(s, mscale_all_dim)^2 under YaRN.

        transformers (modeling_rope_utils.yarn_apply_mscale, v5) applies the factor only when
        mscale_all_dim is present and non-zero; DeepSeek's reference applies it always.
        """
        scale = self.qk_head_dim ** -0.5
        if self.rope.rope_type == "yarn" and self.rope.mscale_all_dim:
            m = yarn_mscale(self.rope.factor, self.rope.mscale_all_dim)
            scale *= m * m
        return scale

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        return _parse_config(raw)

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        return _parse_config(read_config_json(path))


def read_config_json(path: str | Path) -> dict[str, Any]:
    """Read config.json (or a checkpoint directory's config.json) as a dict, with clear errors."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}; a checkpoint directory needs config.json")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); restore the file from the checkpoint") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a JSON object, found {type(raw).__name__}")
    return raw


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude factor m(s, a) = 1 + 0.1 a ln s, and 1 for s <= 1."""
    return 1.0 if factor <= 1 else 1.0 + 0.1 * mscale * math.log(factor)


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"invalid config value {key}={value!r}: expected {expected}")


def _get(raw: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    if key not in raw or raw[key] is None:
        if default is ...:
            raise ConfigError(f"config.json is missing the required key {key!r}")
        return default
    value = raw[key]
    # bool is an int subclass; reject true/false where a number is meant
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ConfigError(f"invalid config value {key}={value!r}: expected {_kind_name(kind)}")
    if kind is float and isinstance(value, int):
        return float(value)
    if not isinstance(value, kind):
        raise ConfigError(f"invalid config value {key}={value!r}: expected {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({int: "an integer", float: "a number", bool: "true or false", str: "a string",
                        dict: "an object", list: "a list"}.get(k, k.__name__) for k in kinds)


def _parse_rope(raw: dict[str, Any]) -> RopeConfig:
    # transformers v5 writes rope_parameters (with rope_theta inside); older configs rope_scaling
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"invalid config value rope_scaling={params!r}: expected an object or null")
    theta = params.get("rope_theta", raw.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", "yarn"):
        raise ConfigError(f"unsupported rope type {rope_type!r} in rope_scaling: minillm supports 'default' and 'yarn'")
    if not isinstance(theta, (int, float)) or theta <= 1:
        raise ConfigError(f"invalid config value rope_theta={theta!r}: expected a number greater than 1")
    if rope_type == "default":
        return RopeConfig(theta=float(theta))

    sub = {k: v for k, v in params.items() if v is not None}
    factor = sub.get("factor")
    original = sub.get("original_max_position_embeddings")
    if original is None:
        raise ConfigError("rope_scaling of type 'yarn' needs original_max_position_embeddings")
    if factor is None:
        factor = raw["max_position_embeddings"] / original
    if not isinstance(factor, (int, float)) or factor <= 0:
        raise ConfigError(f"invalid config value rope_scaling.factor={factor!r}: expected a positive number")
    return RopeConfig(
        rope_type="yarn",
        theta=float(theta),
        factor=float(factor),
        original_max_position_embeddings=int(original),
        beta_fast=float(sub.get("beta_fast") or 32.0),
        beta_slow=float(sub.get("beta_slow") or 1.0),
        mscale=sub.get("mscale"),
        mscale_all_dim=sub.get("mscale_all_dim"),
        attention_factor=sub.get("attention_factor"),
        truncate=bool(sub.get("truncate", True)),
    )


def _eos_ids(raw: dict[str, Any]) -> tuple[int, ...]:
    eos = raw.get("eos_token_id")
    if eos is None:
        return ()
    eos_list = eos if isinstance(eos, list) else [eos]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in eos_list):
        raise ConfigError(f"invalid config value eos_token_id={eos!r}: expected an integer or a list of integers")
    return tuple(eos_list)


def _parse_config(raw: dict[str, Any]) -> ModelConfig:
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"unsupported model_type {model_type!r} in config.json: minillm runs "
            f"{' and '.join(SUPPORTED_MODEL_TYPES)} checkpoints"
        )
    routing = _ROUTING_DEFAULTS[model_type]
    # transformers' DeepseekV2Config calls the routed expert count num_experts in memory
    experts = raw.get("n_routed_experts", raw.get("num_experts"))
    hidden = _get(raw, "hidden_size", int)
    heads = _get(raw, "num_attention_heads", int)
    return ModelConfig(
        model_type=model_type,
        vocab_size=_get(raw, "vocab_size", int),
        hidden_size=hidden,
        num_hidden_layers=_get(raw, "num_hidden_layers", int),
        rms_norm_eps=_get(raw, "rms_norm_eps", float, 1e-6),
        max_position_embeddings=_get(raw, "max_position_embeddings", int, 4096),
        tie_word_embeddings=_get(raw, "tie_word_embeddings", bool, False),
        bos_token_id=_get(raw, "bos_token_id", int, None),
        eos_token_ids=_eos_ids(raw),
        num_attention_heads=heads,
        q_lora_rank=_get(raw, "q_lora_rank", int, None),
        kv_lora_rank=_get(raw, "kv_lora_rank", int),
        qk_nope_head_dim=_get(raw, "qk_nope_head_dim", int),
        qk_rope_head_dim=_get(raw, "qk_rope_head_dim", int),
        v_head_dim=_get(raw, "v_head_dim", int),
        rope=_parse_rope(raw),
        intermediate_size=_get(raw, "intermediate_size", int),
        moe_intermediate_size=_get(raw, "moe_intermediate_size", int, 0),
        n_routed_experts=_get({"n": experts}, "n", int, None),
        n_shared_experts=_get(raw, "n_shared_experts", int, 0),
        num_experts_per_tok=_get(raw, "num_experts_per_tok", int, 1),
        n_group=_get(raw, "n_group", int, 1),
        topk_group=_get(raw, "topk_group", int, 1),
        scoring_func=_get(raw, "scoring_func", str, routing["scoring_func"]),
        topk_method=_get(raw, "topk_method", str, routing["topk_method"]),
        norm_topk_prob=_get(raw, "norm_topk_prob", bool, routing["norm_topk_prob"]),
        routed_scaling_factor=_get(raw, "routed_scaling_factor", float, 1.0),
        first_k_dense_replace=_get(raw, "first_k_dense_replace", int, 0),
        moe_layer_freq=_get(raw, "moe_layer_freq", int, 1),
        num_nextn_predict_layers=_get(raw, "num_nextn_predict_layers", int, 0),
        engram=parse_engram(raw, _get(raw, "num_hidden_layers", int), _get(raw, "vocab_size", int)),
        extra=raw,
    )
