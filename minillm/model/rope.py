"""Rotary position embedding with optional YaRN scaling, as DeepSeek models use it.

DeepSeek rotates adjacent pairs (x[2j], x[2j+1]) of the RoPE slice. transformers' DeepseekV3
(rope_interleave=True) computes the same rotation and stores the result de-interleaved; q and k
get the same permutation there, so every attention score is equal. This engine keeps the pair
layout, for queries and for the cached keys alike.
"""

from __future__ import annotations

import math

import numpy as np

from minillm.config import RopeConfig, yarn_mscale


def inverse_frequencies(rope: RopeConfig, dim: int) -> tuple[np.ndarray, float]:
    """Per-pair angular frequencies (dim/2,) and the cos/sin magnitude factor.

    YaRN keeps the fast dimensions, divides the slow ones by `factor`, and ramps linearly in
    between, as transformers' `_compute_yarn_parameters` (v5) does.
    """
    exponents = np.arange(0, dim, 2, dtype=np.float64) / dim
    base_freq = 1.0 / rope.theta**exponents
    if rope.rope_type != "yarn":
        return base_freq.astype(np.float32), 1.0

    factor = rope.factor
    if rope.attention_factor is not None:
        attention_factor = float(rope.attention_factor)
    elif rope.mscale and rope.mscale_all_dim:
        attention_factor = yarn_mscale(factor, rope.mscale) / yarn_mscale(factor, rope.mscale_all_dim)
    else:
        attention_factor = yarn_mscale(factor)

    def correction_dim(rotations: float) -> float:
        return dim * math.log(rope.original_max_position_embeddings / (rotations * 2 * math.pi)) / (
            2 * math.log(rope.theta)
        )

    low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid dividing by zero in the ramp
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    freq = base_freq / factor * ramp + base_freq * (1.0 - ramp)
    return freq.astype(np.float32), attention_factor


class Rotary:
    """cos/sin tables, grown on demand, for the RoPE slice of width `dim`."""

    def __init__(self, rope: RopeConfig, dim: int):
        self.freq, self.attention_factor = inverse_frequencies(rope, dim)
        self.cos = np.empty((0, dim // 2), dtype=np.float32)
        self.sin = np.empty((0, dim // 2), dtype=np.float32)

    def _grow(self, length: int) -> None:
        size = max(length, 2 * self.cos.shape[0], 256)
        angles = np.arange(size, dtype=np.float32)[:, None] * self.freq[None, :]  # (P, R/2)
        self.cos = (np.cos(angles) * self.attention_factor).astype(np.float32)
        self.sin = (np.sin(angles) * self.attention_factor).astype(np.float32)

    def tables(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """cos and sin tables (P, R/2) covering positions 0..length-1 at least."""
        if length > self.cos.shape[0]:
            self._grow(length)
        return self.cos, self.sin

    def apply(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Rotate x (T, ..., R) at integer positions (T,), pairing x[..., 2j] with x[..., 2j+1]."""
        if positions.size and positions.max() >= self.cos.shape[0]:
            self._grow(int(positions.max()) + 1)
        extra_axes = (1,) * (x.ndim - 2)
        cos = self.cos[positions].reshape(positions.shape + extra_axes + (-1,))  # (T, 1.., R/2)
        sin = self.sin[positions].reshape(positions.shape + extra_axes + (-1,))
        even, odd = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out
