"""DeepSeekMoE's router and expert FFN for a few rows, as Numba kernels.

`route_into` follows `minillm.model.moe.route` step by step: router logits, sigmoid or softmax
scores, the correction bias for choosing (noaux_tc), the group limit (the topk_group groups with
the best group scores stay), top-K, then the chosen scores renormalised and scaled.
`swiglu_add` adds weight * down(silu(gate x) * up x) to the residual stream for every row (the
dense FFN and the shared experts); `expert_add` does it for the rows routed to one expert only.
NumPy twins: `route` and `swiglu` (tests/test_kernels.py).
Shape legend: T rows, D model width, E routed experts, G groups, K experts per token, F FFN width.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from minillm.kernels.flags import FAST_MATH

from minillm.kernels.linear import matmul_into


@njit(cache=True, fastmath=FAST_MATH)
def _largest(values, count):  # pragma: no cover - compiled
    """Index of the largest of values[:count] (the first one on ties)."""
    best = 0
    for i in range(1, count):
        if values[i] > values[best]:
            best = i
    return best


class Routing(NamedTuple):
    """Tell `route_into` how to choose experts: the router settings of config.json, as plain values."""

    sigmoid: bool  # sigmoid scores (V3), else softmax (V2)
    correction: bool  # add the correction bias to the scores when choosing (noaux_tc)
    groups: int  # expert groups; 1 turns the group limit off
    topk_group: int  # groups kept
    sum_top2: bool  # group score: the sum of its two largest choice values (noaux_tc), else the largest
    normalize: bool  # renormalise the chosen scores to sum to 1 (norm_topk_prob)
    scaling: np.float32  # routed_scaling_factor

    @classmethod
    def from_config(cls, cfg) -> Routing:
        noaux = cfg.topk_method == "noaux_tc"
        return cls(cfg.scoring_func == "sigmoid", noaux, cfg.n_group if cfg.uses_groups else 1, cfg.topk_group or 1,
                   noaux, bool(cfg.norm_topk_prob), np.float32(cfg.routed_scaling_factor))


@njit(cache=True, fastmath=FAST_MATH)
def route_into(x, gate, bias, routing, logits, choice, group_scores, indices, weights):  # pragma: no cover
    """Route x (T, D) with router gate (E, D): indices (T, K) int64 and weights (T, K) float32.

    bias (E,) is used when routing.correction is true (else it may be empty).
    Scratch: logits (T, E), choice (E,), group_scores (G,)."""
    sigmoid, correction, groups, topk_group, sum_top2, normalize, scaling = routing
    T = x.shape[0]
    E = gate.shape[0]
    K = indices.shape[1]
    matmul_into(x, gate, logits)
    for t in range(T):
        if sigmoid:
            for e in range(E):
                logits[t, e] = np.float32(1.0) / (np.float32(1.0) + np.exp(-logits[t, e]))
        else:
            peak = logits[t, 0]
            for e in range(E):
                peak = max(peak, logits[t, e])
            total = np.float32(0.0)
            for e in range(E):
                logits[t, e] = np.exp(logits[t, e] - peak)
                total += logits[t, e]
            for e in range(E):
                logits[t, e] /= total
        for e in range(E):  # logits[t] is now the scores
            choice[e] = logits[t, e] + bias[e] if correction else logits[t, e]
        if groups > 1:
            size = E // groups
            for g in range(groups):
                first, second = -np.inf, -np.inf
                for e in range(g * size, (g + 1) * size):
                    if choice[e] > first:
                        first, second = choice[e], first
                    elif choice[e] > second:
                        second = choice[e]
                group_scores[g] = first + second if sum_top2 else first
            for _ in range(groups - topk_group):  # drop the groups with the smallest scores
                worst = 0
                for g in range(1, groups):
                    if group_scores[g] < group_scores[worst]:
                        worst = g
                group_scores[worst] = np.inf
                for e in range(worst * size, (worst + 1) * size):
                    choice[e] = -np.inf
        total = np.float32(0.0)
        for k in range(K):
            best = _largest(choice, E)
            indices[t, k] = best
            weights[t, k] = logits[t, best]
            total += logits[t, best]
            choice[best] = -np.inf
        for k in range(K):
            if normalize:
                weights[t, k] = weights[t, k] / (total + np.float32(1e-20))
            weights[t, k] *= scaling


@njit(cache=True, fastmath=FAST_MATH)
def _swiglu_into(x, w_gate, w_up, w_down, gate, up, out):  # pragma: no cover - compiled
    """Compute out = down(silu(gate x) * up x) for the rows of x (T, D), with scratch gate, up (T, F)."""
    matmul_into(x, w_gate, gate)
    matmul_into(x, w_up, up)
    for t in range(x.shape[0]):
        for f in range(gate.shape[1]):
            g = gate[t, f]
            gate[t, f] = g / (np.float32(1.0) + np.exp(-g)) * up[t, f]
    matmul_into(gate, w_down, out)


@njit(cache=True, fastmath=FAST_MATH)
def swiglu_add(x, w_gate, w_up, w_down, row_weights, gate, up, out, h):  # pragma: no cover - compiled
    """h[t] += row_weights[t] * down(silu(gate x[t]) * up x[t]) for every row t of x (T, D).

    w_gate, w_up (F, D); w_down (D, F), float32 or BF16 bits; row_weights (T,).
    Scratch: gate, up (T, F) and out (T, D)."""
    _swiglu_into(x, w_gate, w_up, w_down, gate, up, out)
    for t in range(x.shape[0]):
        for d in range(h.shape[1]):
            h[t, d] += row_weights[t] * out[t, d]


@njit(cache=True, fastmath=FAST_MATH)
def expert_add(x, w_gate, w_up, w_down, expert, indices, weights, picked, rows, row_weights, gate, up, out,
               h):  # pragma: no cover - compiled
    """h[t] += w * expert(x[t]) for each row t routed to `expert` with weight w (indices, weights
    (T, K) from route_into). Rows routed elsewhere skip the expert.

    Scratch: picked (T, D) gathers the routed rows. rows (T,) int64 and row_weights (T,) keep
    their indices and weights. gate, up (T, F) and out (T, D) are as for swiglu_add."""
    n = 0
    for t in range(indices.shape[0]):
        for k in range(indices.shape[1]):
            if indices[t, k] == expert:
                picked[n] = x[t]
                rows[n] = t
                row_weights[n] = weights[t, k]
                n += 1
    _swiglu_into(picked[:n], w_gate, w_up, w_down, gate[:n], up[:n], out[:n])
    for j in range(n):
        t = rows[j]
        for d in range(h.shape[1]):
            h[t, d] += row_weights[j] * out[j, d]
