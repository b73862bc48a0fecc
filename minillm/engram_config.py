"""EngramConfig: the optional "engram" block of config.json.

Keys follow DeepSeek's Engram demo (engram_demo_v1.py in deepseek-ai/Engram):

- ``layer_ids``: decoder layers that add Engram before their attention;
- ``max_ngram_size`` N: orders 2..N are hashed;
- ``n_head_per_ngram`` K: hash heads per order;
- ``n_embed_per_ngram``: row width times K;
- ``engram_vocab_size``: base table size per order, each head taking a distinct prime at or above it;
- ``seed``, and ``kernel_size`` of the causal convolution, whose dilation is N;
- ``pad_id``: the token read before the start of a sequence.

A config without the block is a plain DeepseekV3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from minillm.errors import ConfigError


@dataclass(frozen=True, slots=True)
class EngramConfig:
    layer_ids: tuple[int, ...]
    max_ngram_size: int
    n_head_per_ngram: int
    n_embed_per_ngram: int
    engram_vocab_size: tuple[int, ...]
    seed: int
    kernel_size: int
    pad_id: int

    @property
    def row_width(self) -> int:
        """Values per table row."""
        return self.n_embed_per_ngram // self.n_head_per_ngram

    @property
    def tables(self) -> int:
        """Hash tables per Engram layer: (N - 1) orders x K heads."""
        return (self.max_ngram_size - 1) * self.n_head_per_ngram

    @property
    def embed_width(self) -> int:
        """Width of the concatenated rows of one token."""
        return (self.max_ngram_size - 1) * self.n_embed_per_ngram


def _int(block: dict[str, Any], key: str, minimum: int) -> int:
    value = block.get(key)
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
        raise ConfigError(f"invalid config value engram.{key}={value!r}: expected an integer >= {minimum}")
    return value


def _int_list(block: dict[str, Any], key: str, minimum: int) -> tuple[int, ...]:
    value = block.get(key)
    if not (isinstance(value, list) and value and
            all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value)):
        raise ConfigError(f"invalid config value engram.{key}={value!r}: expected a list of integers >= {minimum}")
    return tuple(value)


def parse_engram(raw: dict[str, Any], num_hidden_layers: int, vocab_size: int) -> EngramConfig | None:
    """Read and check config.json's "engram" block; None when it is absent or null."""
    block = raw.get("engram")
    if block is None:
        return None
    if not isinstance(block, dict):
        raise ConfigError(f"invalid config value engram={block!r}: expected an object or null")
    cfg = EngramConfig(
        layer_ids=_int_list(block, "layer_ids", 0),
        max_ngram_size=_int(block, "max_ngram_size", 2),
        n_head_per_ngram=_int(block, "n_head_per_ngram", 1),
        n_embed_per_ngram=_int(block, "n_embed_per_ngram", 1),
        engram_vocab_size=_int_list(block, "engram_vocab_size", 2),
        seed=_int(block, "seed", 0),
        kernel_size=_int(block, "kernel_size", 1),
        pad_id=_int(block, "pad_id", 0),
    )
    if max(cfg.layer_ids) >= num_hidden_layers or len(set(cfg.layer_ids)) != len(cfg.layer_ids):
        raise ConfigError(f"invalid config value engram.layer_ids={list(cfg.layer_ids)}: expected distinct "
                          f"decoder layers in 0..{num_hidden_layers - 1}")
    if len(cfg.engram_vocab_size) != cfg.max_ngram_size - 1:
        raise ConfigError(f"invalid config value engram.engram_vocab_size={list(cfg.engram_vocab_size)}: expected "
                          f"one base size per n-gram order 2..{cfg.max_ngram_size}")
    if cfg.n_embed_per_ngram % cfg.n_head_per_ngram:
        raise ConfigError(f"invalid config value engram.n_embed_per_ngram={cfg.n_embed_per_ngram}: expected a "
                          f"multiple of n_head_per_ngram ({cfg.n_head_per_ngram})")
    if cfg.pad_id >= vocab_size:
        raise ConfigError(f"invalid config value engram.pad_id={cfg.pad_id}: expected a token id below "
                          f"vocab_size ({vocab_size})")
    return cfg
