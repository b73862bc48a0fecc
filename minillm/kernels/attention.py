"""Absorbed MLA attention for a few query rows over the latent cache, as one Numba kernel.

Per query row t and head h (DeepSeek-V2 paper, section 2.1.3, with W_UK and W_UV absorbed):

    q_lat = W_UK[h]^T q_nope           (C,)  the query moved into latent space
    s_j   = scale * [q_lat ; q_rope] . [c_j ; k_rope_j]   for every cached key j at or before t
    o     = W_UV[h] (sum_j softmax(s)_j c_j)             (V,)

Keys come as two blocks, the hot arena and the staged copy of pages in lower tiers, each with
the position of every row. Rows at later positions, and unused rows, are masked out.
NumPy twin: `MLA.attend_absorbed` without its output projection (tests/test_kernels.py).
Shape legend: T rows, H heads, N nope dim, R rope dim, C kv_lora_rank, V v_head_dim, S keys.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from minillm.kernels.flags import FAST_MATH


@njit(cache=True, fastmath=FAST_MATH)
def _scores(query, keys, key_positions, limit, scale, scores, first):  # pragma: no cover - compiled
    """scores[first + j] = scale * query . keys[j] for keys at or before position `limit`, else
    -inf; returns the largest score. query (C + R,) is [W_UK-absorbed q_nope ; q_rope]."""
    W = query.shape[0]
    best = -np.inf
    for s in range(keys.shape[0]):
        if key_positions[s] > limit:
            scores[first + s] = -np.inf
            continue
        total = np.float32(0.0)
        for i in range(W):
            total += query[i] * keys[s, i]
        total *= scale
        scores[first + s] = total
        best = max(best, total)
    return best


@njit(cache=True, fastmath=FAST_MATH)
def _mix(keys, scores, first, peak, mixed):  # pragma: no cover - compiled
    """Add exp(score - peak) * c_j over one block's keys into mixed (C,); return the weights' sum."""
    C = mixed.shape[0]
    total = np.float32(0.0)
    for s in range(keys.shape[0]):
        if scores[first + s] == -np.inf:
            continue
        p = np.exp(scores[first + s] - peak)
        total += p
        for c in range(C):
            mixed[c] += p * keys[s, c]
    return total


@njit(cache=True, fastmath=FAST_MATH)
def absorbed_attention(q, positions, w_uk, w_uv, keys_a, positions_a, keys_b, positions_b, scale,
                       query, mixed, scores, out):  # pragma: no cover - compiled
    """q (T, H * (N + R)) with rotated RoPE parts -> out (T, H * V).

    w_uk (H, N, C), w_uv (H, V, C); scratch: query (C + R,), mixed (C,), scores (at least S_a + S_b,)."""
    H, N, C = w_uk.shape
    V = w_uv.shape[1]
    head_dim = q.shape[1] // H
    R = head_dim - N
    for t in range(q.shape[0]):
        for h in range(H):
            base = h * head_dim
            query[:C] = 0.0
            for n in range(N):
                qn = q[t, base + n]
                for c in range(C):
                    query[c] += qn * w_uk[h, n, c]
            for r in range(R):
                query[C + r] = q[t, base + N + r]
            peak = max(_scores(query, keys_a, positions_a, positions[t], scale, scores, 0),
                       _scores(query, keys_b, positions_b, positions[t], scale, scores, keys_a.shape[0]))
            mixed[:] = 0.0
            total = _mix(keys_a, scores, 0, peak, mixed) + _mix(keys_b, scores, keys_a.shape[0], peak, mixed)
            for v in range(V):
                acc = np.float32(0.0)
                for c in range(C):
                    acc += mixed[c] * w_uv[h, v, c]
                out[t, h * V + v] = acc / total
