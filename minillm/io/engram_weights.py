"""Expected names and shapes of Engram tensors, and loading them onto EngramWeights.

An Engram layer L stores its tensors under ``model.layers.{L}.engram.``. The learned ones are
``embedding.weight`` (all hash tables stacked), ``key_proj`` and ``value_proj`` (weight and
bias), ``key_norm``, ``query_norm``, ``conv.weight`` (D, 1, K) and ``conv_norm``. Three int64
tensors are derived from the tokenizer and the seed: ``compressed_ids``, ``multipliers`` and
``table_sizes``. The table stays in the memory-mapped file; everything else is read as float32.
"""

from __future__ import annotations

import numpy as np

from minillm.config import ModelConfig
from minillm.errors import CheckpointError
from minillm.io.safetensors import Checkpoint, bf16_to_f32
from minillm.model.engram import EngramTable, EngramWeights
from minillm.model.engram_hash import table_sizes


def _sizes(cfg: ModelConfig) -> dict[int, list[int]]:
    e = cfg.engram
    return table_sizes(list(e.layer_ids), e.max_ngram_size, e.n_head_per_ngram, list(e.engram_vocab_size))


def engram_shapes(cfg: ModelConfig, layer: int) -> dict[str, tuple[int, ...]]:
    """Return the tensor shapes of a layer's Engram block ({} when the layer has none)."""
    e = cfg.engram
    if e is None or layer not in e.layer_ids:
        return {}
    D, E, p = cfg.hidden_size, e.embed_width, f"model.layers.{layer}.engram"
    return {
        f"{p}.embedding.weight": (sum(_sizes(cfg)[layer]), e.row_width),
        f"{p}.compressed_ids": (cfg.vocab_size,),
        f"{p}.multipliers": (e.max_ngram_size,),
        f"{p}.table_sizes": (e.tables,),
        f"{p}.key_proj.weight": (D, E), f"{p}.key_proj.bias": (D,),
        f"{p}.value_proj.weight": (D, E), f"{p}.value_proj.bias": (D,),
        f"{p}.key_norm.weight": (D,), f"{p}.query_norm.weight": (D,),
        f"{p}.conv.weight": (D, 1, e.kernel_size), f"{p}.conv_norm.weight": (D,),
    }


def _table(ckpt: Checkpoint, name: str) -> EngramTable:
    dtype = ckpt.dtype(name)
    if dtype == "BF16":
        return EngramTable(ckpt.raw(name), bf16_to_f32)
    if dtype in ("F32", "F16"):
        return EngramTable(ckpt.raw(name), lambda rows: rows.astype(np.float32))
    raise CheckpointError(f"Engram table {name!r} has dtype {dtype}; store it as BF16, F16 or F32")


def load_engram(cfg: ModelConfig, ckpt: Checkpoint, layer: int) -> EngramWeights | None:
    if not engram_shapes(cfg, layer):
        return None
    p = f"model.layers.{layer}.engram"
    integers = {}
    for key in ("compressed_ids", "multipliers", "table_sizes"):
        if not ckpt.dtype(f"{p}.{key}").startswith(("I", "U")):
            raise CheckpointError(f"{p}.{key} must contain integers, found dtype {ckpt.dtype(f'{p}.{key}')}")
        integers[key] = ckpt.tensor(f"{p}.{key}").astype(np.int64)
    expected = _sizes(cfg)[layer]
    if integers["table_sizes"].tolist() != expected:
        raise CheckpointError(f"{p}.table_sizes {integers['table_sizes'].tolist()} differ from the sizes config.json's "
                              f"engram block gives ({expected}): check that config.json belongs to these weights")
    if integers["compressed_ids"].min() < 0:
        raise CheckpointError(f"invalid {p}.compressed_ids: it contains negative ids; export the checkpoint again")
    return EngramWeights(
        table=_table(ckpt, f"{p}.embedding.weight"),
        key_proj=ckpt.tensor(f"{p}.key_proj.weight"), key_bias=ckpt.tensor(f"{p}.key_proj.bias"),
        value_proj=ckpt.tensor(f"{p}.value_proj.weight"), value_bias=ckpt.tensor(f"{p}.value_proj.bias"),
        key_norm=ckpt.tensor(f"{p}.key_norm.weight"), query_norm=ckpt.tensor(f"{p}.query_norm.weight"),
        conv=ckpt.tensor(f"{p}.conv.weight")[:, 0, :], conv_norm=ckpt.tensor(f"{p}.conv_norm.weight"),
        **integers,
    )
