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
from minillm.kernels.linear import matmul_into


@njit(cache=True, fastmath=FAST_MATH)
def _weigh(scores, key_positions, positions, heads, peaks):  # pragma: no cover - compiled
    """Mask one block's scores (T * H, S) for keys after each row's position with -inf, and raise
    each row's running maximum in peaks (T * H,)."""
    for r in range(scores.shape[0]):
        limit = positions[r // heads]
        for s in range(scores.shape[1]):
            if key_positions[s] > limit:
                scores[r, s] = -np.inf
            else:
                peaks[r] = max(peaks[r], scores[r, s])


@njit(cache=True, fastmath=FAST_MATH)
def _mix(keys, scores, peaks, totals, mixed):  # pragma: no cover - compiled
    """For every row r of scores (T * H, S): add exp(score - peak) * c_j over one block's keys into
    mixed[r] (C,), and those weights into totals[r]. Each key is read once for all rows."""
    C = mixed.shape[1]
    for s in range(keys.shape[0]):
        for r in range(scores.shape[0]):
            if scores[r, s] == -np.inf:
                continue
            p = np.exp(scores[r, s] - peaks[r])
            totals[r] += p
            for c in range(C):
                mixed[r, c] += p * keys[s, c]


@njit(cache=True, fastmath=FAST_MATH)
def absorbed_attention(q, positions, w_uk, w_uv, keys_a, positions_a, keys_b, positions_b, scale,
                       queries, mixed, peaks, totals, scores, out):  # pragma: no cover - compiled
    """q (T, H * (N + R)) with rotated RoPE parts -> out (T, H * V).

    All T * H (row, head) queries attend together, so that each cached key is read once per step
    rather than once per head and row: the scores are one matmul_into over the keys.
    w_uk (H, N, C), w_uv (H, V, C); scratch: queries (T * H, C + R), mixed (T * H, C),
    peaks and totals (T * H,), scores (at least T * H * (S_a + S_b),)."""
    H, N, C = w_uk.shape
    V = w_uv.shape[1]
    T = q.shape[0]
    head_dim = q.shape[1] // H
    R = head_dim - N
    rows = T * H
    for t in range(T):
        for h in range(H):
            r = t * H + h
            base = h * head_dim
            queries[r, :C] = 0.0
            for n in range(N):
                qn = q[t, base + n] * scale
                for c in range(C):
                    queries[r, c] += qn * w_uk[h, n, c]
            for i in range(R):
                queries[r, C + i] = q[t, base + N + i] * scale
    S_a, S_b = keys_a.shape[0], keys_b.shape[0]
    grid = scores[: rows * (S_a + S_b)].reshape((rows, S_a + S_b))
    block_a, block_b = grid[:, :S_a], grid[:, S_a:]
    matmul_into(queries[:rows], keys_a, block_a)
    matmul_into(queries[:rows], keys_b, block_b)
    peaks[:rows] = -np.inf
    _weigh(block_a, positions_a, positions, H, peaks)
    _weigh(block_b, positions_b, positions, H, peaks)
    mixed[:rows] = 0.0
    totals[:rows] = 0.0
    _mix(keys_a, block_a, peaks, totals, mixed)
    _mix(keys_b, block_b, peaks, totals, mixed)
    for t in range(T):
        for h in range(H):
            r = t * H + h
            for v in range(V):
                acc = np.float32(0.0)
                for c in range(C):
                    acc += mixed[r, c] * w_uv[h, v, c]
                out[t, h * V + v] = acc / totals[r]
