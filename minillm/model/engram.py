"""Engram: hashed n-gram memory added to the residual stream before a layer's attention.

For token t, Engram gathers one row per (order, head) from a large table and concatenates them
into e_t (E = (N-1) * n_embed_per_ngram values). Then, with h_t the residual stream::

    score_t = key_norm(W_k e_t + b_k) . query_norm(h_t) / sqrt(D)
    alpha_t = sigmoid(sign(score_t) * sqrt(max(|score_t|, 1e-6)))
    v_t     = alpha_t * (W_v e_t + b_v)
    y_t     = v_t + silu(sum_j w_j * u_{t - (K-1-j) * N}),   u = conv_norm(v)   (causal, dilation N)

and the layer continues with h_t + y_t. The rows depend only on token ids, so the table stays in
the memory-mapped checkpoint (the dram tier) and the rows of a token are gathered as soon as the
token is known, before the forward pass starts (EngramState.prepare). The convolution looks 9
positions back (K = 4, N = 3), so EngramState also keeps u for every position.
Shape legend: T tokens, D model width, E embedded width, R rows per token ((N-1) * heads).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from minillm.engram_config import EngramConfig
from minillm.model.engram_hash import ngram_indexes
from minillm.model.norm import linear, rms_norm, silu

GATE_FLOOR = 1e-6  # |score| floor under the gate's square root, as in DeepSeek's demo
CONV_NORM_EPS = 1e-5  # eps of the norm before the convolution, as in DeepSeek's demo


class EngramTable:
    """The hash tables of one layer: stored rows in the memory-mapped checkpoint, never copied whole."""

    def __init__(self, stored: np.ndarray, to_float32: Callable[[np.ndarray], np.ndarray]):
        self.stored = stored  # (rows, E / R) as stored (BF16 bits, F32, ...)
        self.to_float32 = to_float32

    @property
    def nbytes(self) -> int:
        return self.stored.nbytes

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, int, int]:
        """Read rows (T, R); return (values (T, R * width) float32, distinct rows read, bytes read)."""
        unique, inverse = np.unique(rows, return_inverse=True)
        values = self.to_float32(self.stored[unique])
        return values[inverse.reshape(-1)].reshape(rows.shape[0], -1), unique.size, unique.size * self.stored[0].nbytes


@dataclass
class EngramWeights:
    table: EngramTable
    compressed_ids: np.ndarray  # (V,) int64 token id -> compressed id
    multipliers: np.ndarray  # (N,) int64
    table_sizes: np.ndarray  # (R,) int64 prime rows per head
    key_proj: np.ndarray  # (D, E)
    key_bias: np.ndarray  # (D,)
    value_proj: np.ndarray  # (D, E)
    value_bias: np.ndarray  # (D,)
    key_norm: np.ndarray  # (D,)
    query_norm: np.ndarray  # (D,)
    conv: np.ndarray  # (D, K) depthwise kernel; tap K-1 reads the current position
    conv_norm: np.ndarray  # (D,)

    @property
    def offsets(self) -> np.ndarray:
        """First row of each head's table within the shared table."""
        return np.concatenate([[0], np.cumsum(self.table_sizes)[:-1]]).astype(np.int64)


class EngramLayer:
    def __init__(self, config: EngramConfig, weights: EngramWeights, eps: float):
        self.config = config
        self.w = weights
        self.eps = eps
        self.offsets = weights.offsets
        self.pad = int(weights.compressed_ids[config.pad_id])

    def rows(self, context: np.ndarray, count: int) -> np.ndarray:
        """Return global table rows (count, R) for the last `count` ids of `context`.

        `context` holds token ids, with the N - 1 ids before them (-1 before the sequence start)."""
        compressed = np.where(context >= 0, self.w.compressed_ids[np.maximum(context, 0)], self.pad)
        local = ngram_indexes(compressed, count, self.w.multipliers, self.w.table_sizes, self.config.n_head_per_ngram)
        return local + self.offsets

    def forward(self, h: np.ndarray, embedded: np.ndarray, history: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Compute Engram's output y (T, D) for hidden states h (T, D) and gathered rows (T, E).

        Writes conv_norm(v) of these positions into history (S, D) and reads the earlier ones."""
        w = self.w
        key = rms_norm(linear(embedded, w.key_proj) + w.key_bias, w.key_norm, self.eps)
        score = np.sum(key * rms_norm(h, w.query_norm, self.eps), axis=-1, keepdims=True) / math.sqrt(h.shape[-1])
        gate = 1.0 / (1.0 + np.exp(-np.sign(score) * np.sqrt(np.maximum(np.abs(score), GATE_FLOOR))))
        value = gate * (linear(embedded, w.value_proj) + w.value_bias)
        history[positions] = rms_norm(value, w.conv_norm, CONV_NORM_EPS)

        mixed = np.zeros_like(value)
        taps = w.conv.shape[1]
        for j in range(taps):
            source = positions - (taps - 1 - j) * self.config.max_ngram_size
            valid = source >= 0
            mixed[valid] += history[source[valid]] * w.conv[:, j]
        return value + silu(mixed)


class EngramState:
    """Per-sequence Engram state: every position's token id and, per Engram layer, conv_norm(v).

    Both are indexed by position, so a speculative step that is rolled back needs no undo. Later
    steps overwrite the rejected positions before anything reads them.
    """

    def __init__(self, layers: dict[int, EngramLayer], width: int, capacity: int = 256):
        self.layers = layers
        self.ids = np.full(capacity, -1, dtype=np.int64)
        self.history = {i: np.zeros((capacity, width), dtype=np.float32) for i in layers}
        self.on_gather: Callable[[int, int, int], None] | None = None  # (lookups, rows, bytes)

    def _reserve(self, end: int) -> None:
        if end <= self.ids.size:
            return
        size = max(end, 2 * self.ids.size)
        self.ids = np.concatenate([self.ids, np.full(size - self.ids.size, -1, dtype=np.int64)])
        for i, rows in self.history.items():
            grown = np.zeros((size, rows.shape[1]), dtype=np.float32)
            grown[: rows.shape[0]] = rows
            self.history[i] = grown

    def record(self, ids: np.ndarray, positions: np.ndarray) -> None:
        """Store the tokens at positions (consecutive), making room for their history rows."""
        start, count = int(positions[0]), int(positions.size)
        if positions[-1] - positions[0] != count - 1:
            raise ValueError(f"invalid positions {positions.tolist()}: Engram needs consecutive positions")
        self._reserve(start + count)
        self.ids[start : start + count] = ids

    def prepare(self, ids: np.ndarray, positions: np.ndarray) -> dict[int, np.ndarray]:
        """Record the tokens at positions (consecutive) and gather their rows for every Engram
        layer: {layer: (T, E) float32}. Called before the forward pass reaches the first layer."""
        self.record(ids, positions)
        start, count = int(positions[0]), int(positions.size)
        gathered = {}
        for i, layer in self.layers.items():
            back = layer.config.max_ngram_size - 1
            lo = start - back
            context = np.concatenate([np.full(max(0, -lo), -1, dtype=np.int64), self.ids[max(0, lo) : start + count]])
            rows = layer.rows(context, count)
            gathered[i], distinct, nbytes = layer.w.table.gather(rows)
            if self.on_gather is not None:
                self.on_gather(rows.size, distinct, nbytes)
        return gathered

    def page_rows(self, start: int, count: int) -> np.ndarray:
        """Return conv_norm(v) of positions start..start+count-1 for every Engram layer: (layers, count, D)."""
        return np.stack([self.history[i][start : start + count] for i in sorted(self.layers)])

    def load(self, start: int, ids: np.ndarray, rows: np.ndarray) -> None:
        """Restore positions start.. from a saved page: their token ids and `page_rows` output."""
        self._reserve(start + ids.size)
        self.ids[start : start + ids.size] = ids
        for k, i in enumerate(sorted(self.layers)):
            self.history[i][start : start + ids.size] = rows[k]
