"""DeepSeekMoE: a router picks K of E routed experts per token; shared experts always run.

Gates (DeepSeek-V2 and V3 papers; transformers' DeepseekV2/V3 routers, v5):
- V2 `softmax` + `greedy`: top-K of softmax(z).
- V2 `softmax` + `group_limited_greedy`: keep the topk_group groups with the largest max score,
  then top-K inside them.
- V3 `sigmoid` + `noaux_tc`: s = sigmoid(z); the correction bias b is added only to *choose*
  experts (group score = sum of the two largest s + b in the group); weights use s itself.
Weights are optionally renormalised over the K chosen (norm_topk_prob), then multiplied by
routed_scaling_factor. NOTE: transformers' DeepseekV2 router never renormalises; DeepSeek's
original V2 code does when norm_topk_prob is true. Released V2 configs set it false.

Shape legend: T tokens, D model width, E routed experts, K experts per token, F expert width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minillm.config import ModelConfig
from minillm.model.norm import linear, silu, swiglu


@dataclass
class MoEWeights:
    gate: np.ndarray  # (E, D) router
    experts: object  # .get(e) -> gate (F, D), up (F, D), down (D, F): resident or streamed
    bias: np.ndarray | None = None  # (E,) e_score_correction_bias, noaux_tc only
    shared_gate: np.ndarray | None = None  # (S * F, D), S shared experts fused into one FFN
    shared_up: np.ndarray | None = None
    shared_down: np.ndarray | None = None


def _top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Indices (T, K) of the k largest entries per row, in descending order of value."""
    part = np.argpartition(-values, k - 1, axis=-1)[:, :k]
    order = np.argsort(-np.take_along_axis(values, part, axis=-1), axis=-1, kind="stable")
    return np.take_along_axis(part, order, axis=-1)


def route(config: ModelConfig, gate: np.ndarray, bias: np.ndarray | None, x: np.ndarray):
    """Choose experts for x (T, D). Returns indices (T, K) int64 and weights (T, K) float32."""
    logits = linear(x, gate)  # (T, E)
    T, E = logits.shape
    if config.scoring_func == "sigmoid":
        scores = 1.0 / (1.0 + np.exp(-logits))
    else:
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        scores = shifted / shifted.sum(axis=-1, keepdims=True)

    choice = scores + bias if (config.topk_method == "noaux_tc" and bias is not None) else scores.copy()
    if config.uses_groups:
        grouped = choice.reshape(T, config.n_group, E // config.n_group)  # (T, G, E/G)
        if config.topk_method == "noaux_tc":
            group_score = np.sort(grouped, axis=-1)[..., -2:].sum(axis=-1)  # (T, G)
        else:
            group_score = grouped.max(axis=-1)
        kept = _top_k(group_score, config.topk_group)  # (T, topk_group)
        dropped = np.ones((T, config.n_group), dtype=bool)
        np.put_along_axis(dropped, kept, False, axis=-1)
        # transformers fills dropped experts with -inf for noaux_tc and 0.0 for group_limited_greedy;
        # softmax scores are positive, so 0.0 and -inf choose the same experts there.
        choice[np.repeat(dropped, E // config.n_group, axis=-1)] = -np.inf

    indices = _top_k(choice, config.num_experts_per_tok)  # (T, K)
    weights = np.take_along_axis(scores, indices, axis=-1)
    if config.norm_topk_prob:
        weights = weights / (weights.sum(axis=-1, keepdims=True) + 1e-20)
    return indices, (weights * config.routed_scaling_factor).astype(np.float32)


def run_experts(w: MoEWeights, x: np.ndarray, indices: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted sum of the chosen experts' SwiGLU outputs, batched: each expert runs once over all
    the tokens routed to it. x (T, D) -> (T, D)."""
    out = np.zeros_like(x)
    for expert in np.unique(indices):
        tokens, slot = np.nonzero(indices == expert)
        w_gate, w_up, w_down = w.experts.get(int(expert))
        hidden = silu(linear(x[tokens], w_gate)) * linear(x[tokens], w_up)  # (t, F)
        out[tokens] += linear(hidden, w_down) * weights[tokens, slot][:, None]
    return out


def run_experts_reference(w: MoEWeights, x: np.ndarray, indices: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Compute the same sum one token and one expert at a time: the plain reference for run_experts."""
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        for slot, expert in enumerate(indices[t]):
            y = swiglu(x[t : t + 1], *w.experts.get(int(expert)))
            out[t] += weights[t, slot] * y[0]
    return out


def moe_forward(config: ModelConfig, w: MoEWeights, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Routed experts plus shared experts for x (T, D). Returns the output (T, D) and the routing
    decision (indices, weights), which callers use for statistics and tracing."""
    indices, weights = route(config, w.gate, w.bias, x)
    out = run_experts(w, x, indices, weights)
    if w.shared_gate is not None:
        out += swiglu(x, w.shared_gate, w.shared_up, w.shared_down)
    return out, indices, weights
