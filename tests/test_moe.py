"""Routing on hand-set scores, and the batched expert loop against the per-token reference."""

import numpy as np
import pytest

from minillm.config import ModelConfig
from minillm.memory.expert_cache import StackedExperts
from minillm.model.moe import MoEWeights, route, run_experts, run_experts_reference

from helpers import TINY_V3

E, D = 8, 8


def config(**changes) -> ModelConfig:
    return ModelConfig.from_dict({**TINY_V3, "hidden_size": D, **changes})


def route_logits(cfg, logits, bias=None):
    """Route with gate = identity, so the router logits are the given rows."""
    return route(cfg, np.eye(E, dtype=np.float32), bias, np.asarray(logits, dtype=np.float32))


def test_noaux_tc_bias_only_chooses():
    cfg = config(num_experts_per_tok=2, n_group=1, topk_group=1, norm_topk_prob=False, routed_scaling_factor=1.0)
    logits = [[3.0, 2.0, 1.0, 0.0, -1.0, -2.0, -3.0, -4.0]]
    bias = np.array([0, 0, 0, 0, 0, 0, 0, 10.0], dtype=np.float32)  # pushes expert 7 into the top 2
    indices, weights = route_logits(cfg, logits, bias)
    assert sorted(indices[0].tolist()) == [0, 7]
    sig = 1 / (1 + np.exp(-np.array(logits[0])))
    np.testing.assert_allclose(sorted(weights[0]), sorted([sig[0], sig[7]]), rtol=1e-6)


def test_noaux_tc_group_limit_with_negative_bias():
    # groups of two: {0,1} {2,3} {4,5} {6,7}; keep 2 groups by the sum of their top-2 biased scores
    cfg = config(num_experts_per_tok=2, n_group=4, topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5)
    logits = [[4.0, 0.0, 3.0, 3.0, 1.2, 1.0, 5.0, -5.0]]
    bias = np.array([0, 0, -0.9, -0.9, 0, 0, 0, 0], dtype=np.float32)
    indices, weights = route_logits(cfg, logits, bias)
    # group scores: {0,1} 1.48, {2,3} 0.11 after the negative bias, {4,5} 1.50, {6,7} 1.00.
    # Expert 6 has the largest score of all but its group is dropped.
    assert sorted(indices[0].tolist()) == [0, 4]
    assert weights[0].sum() == pytest.approx(2.5, rel=1e-6)


def test_softmax_group_limited_greedy_uses_group_max():
    cfg = config(scoring_func="softmax", topk_method="group_limited_greedy", num_experts_per_tok=2,
                 n_group=4, topk_group=1, norm_topk_prob=False, routed_scaling_factor=1.0)
    logits = [[0.0, 5.0, 4.0, 4.0, 0.0, 0.0, 0.0, 0.0]]  # group {2,3} has the larger sum, {0,1} the max
    indices, weights = route_logits(cfg, logits)
    assert sorted(indices[0].tolist()) == [0, 1]
    probs = np.exp(logits[0]) / np.exp(logits[0]).sum()
    np.testing.assert_allclose(sorted(weights[0]), sorted([probs[0], probs[1]]), rtol=1e-6)


def test_softmax_greedy_top_k():
    cfg = config(scoring_func="softmax", topk_method="greedy", num_experts_per_tok=3, n_group=1, topk_group=1,
                 norm_topk_prob=False, routed_scaling_factor=1.0)
    indices, _ = route_logits(cfg, [[0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.0, 0.4]])
    assert indices[0].tolist() == [1, 5, 3]


@pytest.mark.parametrize("tokens", [1, 5, 33])
def test_batched_experts_equal_reference(tokens):
    rng = np.random.default_rng(tokens)
    F = 12
    experts = StackedExperts(rng.standard_normal((E, F, D)).astype(np.float32),
                             rng.standard_normal((E, F, D)).astype(np.float32),
                             rng.standard_normal((E, D, F)).astype(np.float32))
    w = MoEWeights(gate=rng.standard_normal((E, D)).astype(np.float32), experts=experts)
    x = rng.standard_normal((tokens, D)).astype(np.float32)
    indices, weights = route(config(), w.gate, rng.standard_normal(E).astype(np.float32), x)
    # same products summed in another order: float32 round-off only, relative to outputs of O(10)
    np.testing.assert_allclose(run_experts(w, x, indices, weights), run_experts_reference(w, x, indices, weights),
                               rtol=1e-5, atol=1e-4)
