"""Engram's lookup and gated output for a few rows, as one Numba kernel.

For each new position p, `engram_lookup` hashes the n-grams ending at p (orders 2..N, K heads
each) into table rows and gathers them (BF16 or float32) into e_p. `engram_add` then computes the
gated value and the causal convolution over earlier positions, and adds both to the residual
stream h. The equations are in `minillm.model.engram`; its `EngramState.prepare` and
`EngramLayer.forward` are the NumPy twins, and tests/test_numba_forward.py proves the model equal
on both paths.
Shape legend: T rows, D model width, E gathered width, R rows per token, W row width.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from minillm.kernels.flags import FAST_MATH

from minillm.kernels.linear import matmul_into, widen
from minillm.kernels.norm import rms_norm_into


@njit(cache=True)
def engram_lookup(ids, positions, compressed_ids, pad, multipliers, sizes, offsets, heads, table,
                  rows, embedded):  # pragma: no cover - compiled
    """Fill rows (T, R) with global table rows and embedded (T, R * W) with their values.

    ids has every position's token id (-1 where none). Returns the count of distinct rows read.
    The products wrap around in int64, as in `engram_hash.ngram_indexes`."""
    T, R = rows.shape
    N = multipliers.size
    W = table.shape[1]
    for t in range(T):
        p = positions[t]
        mix = compressed_ids[ids[p]] * multipliers[0]
        for k in range(1, N):
            q = p - k
            token = compressed_ids[ids[q]] if q >= 0 and ids[q] >= 0 else pad
            mix = mix ^ (token * multipliers[k])
            for head in range(heads):
                r = (k - 1) * heads + head
                rows[t, r] = mix % sizes[r] + offsets[r]
                for j in range(W):
                    embedded[t, r * W + j] = widen(table[rows[t, r], j])
    distinct = 0
    for i in range(T * R):
        row = rows[i // R, i % R]
        first = True
        for j in range(i):
            if rows[j // R, j % R] == row:
                first = False
                break
        if first:
            distinct += 1
    return distinct


@njit(cache=True, fastmath=FAST_MATH)
def engram_add(h, embedded, positions, key_proj, key_bias, key_norm, query_norm, value_proj, value_bias,
               conv, conv_norm, ngram, eps, conv_eps, gate_floor, history, key, query,
               value):  # pragma: no cover - compiled
    """h += Engram's output for rows h (T, D); writes conv_norm(v) of these positions into history.

    conv (D, K): tap K-1 reads the current position, tap j the one (K-1-j) * ngram earlier.
    Scratch: key, query, value (T, D)."""
    T, D = h.shape
    taps = conv.shape[1]
    matmul_into(embedded, key_proj, key)
    for t in range(T):
        for d in range(D):
            key[t, d] += key_bias[d]
    rms_norm_into(key, key_norm, eps, key)
    rms_norm_into(h, query_norm, eps, query)
    matmul_into(embedded, value_proj, value)
    for t in range(T):
        score = np.float32(0.0)
        for d in range(D):
            score += key[t, d] * query[t, d]
        score /= np.sqrt(np.float32(D))
        signed = np.sign(score) * np.sqrt(max(abs(score), np.float32(gate_floor)))
        gate = np.float32(1.0) / (np.float32(1.0) + np.exp(-signed))
        for d in range(D):
            value[t, d] = gate * (value[t, d] + value_bias[d])
    for t in range(T):
        rms_norm_into(value[t : t + 1], conv_norm, conv_eps, history[positions[t] : positions[t] + 1])
    for t in range(T):
        for d in range(D):
            mixed = np.float32(0.0)
            for j in range(taps):
                source = positions[t] - (taps - 1 - j) * ngram
                if source >= 0:
                    mixed += history[source, d] * conv[d, j]
            h[t, d] += value[t, d] + mixed / (np.float32(1.0) + np.exp(-mixed))
