"""RMSNorm and rotary embedding as Numba kernels that write into caller-owned buffers.

NumPy twins: `minillm.model.norm.rms_norm` and `minillm.model.rope.Rotary.apply`;
tests/test_kernels.py proves each pair equal on random inputs.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from minillm.kernels.flags import FAST_MATH


@njit(cache=True, fastmath=FAST_MATH)
def rms_norm_into(x, weight, eps, out):  # pragma: no cover - compiled
    """out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight for every row t of x (T, n); out may be x."""
    n = x.shape[1]
    for t in range(x.shape[0]):
        total = np.float32(0.0)
        for i in range(n):
            total += x[t, i] * x[t, i]
        inverse = np.float32(1.0) / np.sqrt(total / np.float32(n) + np.float32(eps))
        for i in range(n):
            out[t, i] = x[t, i] * inverse * weight[i]


@njit(cache=True, fastmath=FAST_MATH)
def rope_into(x, heads, head_dim, offset, cos, sin, positions):  # pragma: no cover - compiled
    """Rotate, in place, the RoPE slice of every head of x (T, heads * head_dim).

    Head h's slice starts at column h * head_dim + offset. Pairs (2j, 2j+1) turn by the angle of
    positions[t], read from the tables cos, sin (P, R/2), which YaRN's attention factor already scales."""
    half = cos.shape[1]
    for t in range(x.shape[0]):
        p = positions[t]
        for h in range(heads):
            base = h * head_dim + offset
            for j in range(half):
                even, odd = x[t, base + 2 * j], x[t, base + 2 * j + 1]
                x[t, base + 2 * j] = even * cos[p, j] - odd * sin[p, j]
                x[t, base + 2 * j + 1] = even * sin[p, j] + odd * cos[p, j]
