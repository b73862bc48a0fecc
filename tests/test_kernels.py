"""Numba kernels against their NumPy twins, on random inputs including odd sizes.

Tolerances: the kernels sum float32 in a different order than NumPy's pairwise sums and BLAS,
because fastmath lets LLVM split a dot product over vector lanes. Results then differ by
round-off, about sqrt(n) * 6e-8 relative to the terms' size for a length-n sum. 1e-4 absolute on outputs of order
1 to 30 bounds that with room; a wrong index or a missing term shows up as an error of order 1.
"""

import numpy as np
import pytest

from minillm.config import ModelConfig, RopeConfig
from minillm.io.safetensors import bf16_to_f32
from minillm.kernels.attention import absorbed_attention
from minillm.kernels.linear import float32_to_bf16, linear_rows, linear_rows_reference
from minillm.kernels.moe import Routing, expert_add, route_into, swiglu_add
from minillm.kernels.norm import rms_norm_into, rope_into
from minillm.model.mla import MLA, AttentionWeights
from minillm.model.moe import route
from minillm.model.norm import rms_norm, swiglu
from minillm.model.rope import Rotary

from helpers import TINY_V3

ATOL = 1e-4


def random(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def as_bf16(values: np.ndarray) -> np.ndarray:
    """Round float32 values down to BF16 bit patterns (truncation is fine for test data)."""
    return (values.view(np.uint32) >> 16).astype(np.uint16)


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("out_dim, in_dim", [(1, 1), (7, 13), (128, 256), (4096, 256), (33, 768)])
@pytest.mark.parametrize("dtype", ["float32", "bf16"])
def test_linear_rows_equals_numpy(rows, out_dim, in_dim, dtype):
    rng = np.random.default_rng(rows * 1000 + out_dim)
    x = random(rng, rows, in_dim)
    w = random(rng, out_dim, in_dim)
    if dtype == "bf16":
        w = as_bf16(w)
    np.testing.assert_allclose(linear_rows(x, w), linear_rows_reference(x, w), rtol=1e-4, atol=ATOL)


@pytest.mark.parametrize("dtype", ["float32", "bf16"])
@pytest.mark.parametrize("in_dim", [256, 768, 13])
def test_linear_rows_same_row_same_result(dtype, in_dim):
    """A row's result does not depend on the other rows, bit for bit: rows go through the kernel
    in pairs or alone, and both must sum alike for decode and verify to agree."""
    rng = np.random.default_rng(in_dim)
    x = random(rng, 5, in_dim)
    w = random(rng, 514, in_dim)
    if dtype == "bf16":
        w = as_bf16(w)
    together = linear_rows(x, w)
    for row in range(5):
        np.testing.assert_array_equal(linear_rows(x[row : row + 1], w)[0], together[row])


def test_linear_rows_rejects_wrong_dtype():
    with pytest.raises(ValueError, match="float32"):
        linear_rows(np.ones((1, 4)), np.ones((2, 4), dtype=np.float32))


def test_bf16_round_trip_exact():
    rng = np.random.default_rng(1)
    bits = as_bf16(random(rng, 64, 32))
    values = bf16_to_f32(bits)
    np.testing.assert_array_equal(float32_to_bf16(values), bits)
    assert float32_to_bf16(values + np.float32(1e-3)) is None  # not BF16 numbers: keep float32


@pytest.mark.parametrize("rows, width", [(1, 256), (3, 64), (5, 7)])
def test_rms_norm_into_equals_numpy(rows, width):
    rng = np.random.default_rng(width)
    x, weight = random(rng, rows, width, scale=3.0), random(rng, width)
    out = np.empty_like(x)
    rms_norm_into(x, weight, 1e-6, out)
    np.testing.assert_allclose(out, rms_norm(x, weight, 1e-6), rtol=1e-5, atol=1e-5)
    rms_norm_into(x, weight, 1e-6, x)  # in place
    np.testing.assert_allclose(x, out, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("yarn", [False, True])
@pytest.mark.parametrize("heads, nope, rope", [(4, 32, 16), (3, 5, 6), (1, 0, 2)])
def test_rope_into_equals_rotary(yarn, heads, nope, rope):
    rng = np.random.default_rng(heads + rope)
    config = RopeConfig(theta=10000.0)
    if yarn:
        config = RopeConfig(theta=10000.0, rope_type="yarn", factor=40.0, original_max_position_embeddings=64,
                            beta_fast=32, beta_slow=1, mscale=1.0, mscale_all_dim=1.0)
    rotary = Rotary(config, rope)
    positions = np.array([0, 7, 300, 1001][: 1 + heads % 4])
    x = random(rng, positions.size, heads * (nope + rope))
    expected = x.reshape(positions.size, heads, nope + rope).copy()
    expected[..., nope:] = rotary.apply(expected[..., nope:], positions)
    cos, sin = rotary.tables(int(positions.max()) + 1)
    rope_into(x, heads, nope + rope, nope, cos, sin, positions)
    np.testing.assert_allclose(x, expected.reshape(x.shape), rtol=1e-5, atol=1e-5)


def mla_config(**changes) -> ModelConfig:
    return ModelConfig.from_dict({**TINY_V3, **changes})


@pytest.mark.parametrize("rows, cached, cold", [(1, 1, 0), (1, 37, 0), (3, 50, 0), (2, 20, 13), (4, 0, 9)])
def test_absorbed_attention_equals_mla(rows, cached, cold):
    """Two key blocks with scattered positions and unused rows, as the paged cache hands them over."""
    cfg = mla_config()
    H, N, R, C, V = (cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.kv_lora_rank,
                     cfg.v_head_dim)
    rng = np.random.default_rng(rows * 100 + cached)
    weights = AttentionWeights(kv_a=random(rng, C + R, cfg.hidden_size), kv_a_norm=random(rng, C),
                               kv_b=random(rng, H * (N + V), C, scale=0.3), o=np.eye(H * V, dtype=np.float32))
    mla = MLA(cfg, weights, Rotary(cfg.rope, R))
    start = cached + cold
    positions = np.arange(start, start + rows)
    total = start + rows
    order = rng.permutation(total)
    hot, cold_rows = order[: total - cold], order[total - cold :]
    keys = random(rng, total, C + R)
    empty = np.iinfo(np.int64).max
    hot_keys = np.concatenate([keys[hot], random(rng, 5, C + R)])  # 5 unused rows at the end
    hot_positions = np.concatenate([hot, [empty] * 5]).astype(np.int64)
    blocks = [(hot_keys, hot_positions), (keys[cold_rows], cold_rows.astype(np.int64))]
    q = random(rng, rows, H * (N + R))
    q_heads = q.reshape(rows, H, N + R)
    expected = mla.attend_absorbed(q_heads[..., :N], q_heads[..., N:], blocks, positions)

    def attend(q, positions):
        T = q.shape[0]
        out = np.zeros((T, H * V), dtype=np.float32)
        scratch = (np.zeros((T * H, C + R), np.float32), np.zeros((T * H, C), np.float32), np.zeros(T * H, np.float32),
                   np.zeros(T * H, np.float32), np.zeros(T * H * (total + 5), np.float32))
        absorbed_attention(q, positions, np.ascontiguousarray(mla.w_uk), np.ascontiguousarray(mla.w_uv), *blocks[0],
                           *blocks[1], np.float32(mla.scale), *scratch, out)
        return out

    together = attend(q, positions)
    np.testing.assert_allclose(together, expected, rtol=1e-4, atol=ATOL)
    for t in range(rows):  # a verified row attends exactly as a decoded one: keys after it are masked
        np.testing.assert_array_equal(attend(q[t : t + 1], positions[t : t + 1])[0], together[t])


ROUTERS = {
    "v3 sigmoid groups": dict(scoring_func="sigmoid", topk_method="noaux_tc", n_group=4, topk_group=2,
                              norm_topk_prob=True, routed_scaling_factor=2.5),
    "v3 one group": dict(scoring_func="sigmoid", topk_method="noaux_tc", n_group=1, topk_group=1,
                         norm_topk_prob=False, routed_scaling_factor=1.0),
    "v2 softmax greedy": dict(scoring_func="softmax", topk_method="greedy", n_group=1, topk_group=1,
                              norm_topk_prob=False, routed_scaling_factor=1.0),
    "v2 group limited": dict(scoring_func="softmax", topk_method="group_limited_greedy", n_group=4, topk_group=3,
                             norm_topk_prob=True, routed_scaling_factor=16.0),
}


@pytest.mark.parametrize("name", ROUTERS)
@pytest.mark.parametrize("rows", [1, 3, 8])
def test_route_into_equals_route(name, rows):
    cfg = mla_config(n_routed_experts=8, num_experts_per_tok=3, **ROUTERS[name])
    rng = np.random.default_rng(rows)
    D, E, K = cfg.hidden_size, cfg.n_routed_experts, cfg.num_experts_per_tok
    x, gate = random(rng, rows, D), random(rng, E, D, scale=0.3)
    bias = random(rng, E) if cfg.topk_method == "noaux_tc" else None
    expected_indices, expected_weights = route(cfg, gate, bias, x)

    indices, weights = np.zeros((rows, K), np.int64), np.zeros((rows, K), np.float32)
    groups = cfg.n_group if cfg.uses_groups else 1
    route_into(x, gate, bias if bias is not None else np.zeros(0, np.float32), Routing.from_config(cfg),
               np.zeros((rows, E), np.float32), np.zeros(E, np.float32), np.zeros(groups, np.float32), indices, weights)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows, width, dim", [(1, 256, 256), (3, 33, 17), (8, 768, 256)])
@pytest.mark.parametrize("dtype", ["float32", "bf16"])
def test_swiglu_add_equals_swiglu(rows, width, dim, dtype):
    rng = np.random.default_rng(width)
    x = random(rng, rows, dim)
    matrices = [random(rng, width, dim, scale=0.1), random(rng, width, dim, scale=0.1),
                random(rng, dim, width, scale=0.1)]
    if dtype == "bf16":
        matrices = [as_bf16(m) for m in matrices]
    row_weights = random(rng, rows)
    row_weights[0] = 0.0  # a row routed to other experts
    h = random(rng, rows, dim)
    expected = h + row_weights[:, None] * swiglu(x, *(bf16_to_f32(m) if dtype == "bf16" else m for m in matrices))
    gate, up, out = np.zeros((rows, width), np.float32), np.zeros((rows, width), np.float32), np.zeros_like(x)
    swiglu_add(x, *matrices, row_weights, gate, up, out, h)
    np.testing.assert_allclose(h, expected, rtol=1e-4, atol=ATOL)


@pytest.mark.parametrize("dtype", ["float32", "bf16"])
def test_expert_add_runs_only_the_routed_rows(dtype):
    """expert_add adds each routed row's weighted expert output, leaves the other rows untouched,
    and gives a routed row bit for bit what it gets when it runs alone, as in a decode step."""
    rng = np.random.default_rng(7)
    rows, width, dim, expert = 5, 48, 40, 3
    x = random(rng, rows, dim)
    matrices = [random(rng, width, dim, scale=0.1), random(rng, width, dim, scale=0.1),
                random(rng, dim, width, scale=0.1)]
    if dtype == "bf16":
        matrices = [as_bf16(m) for m in matrices]
    indices = np.array([[3, 1], [0, 2], [5, 3], [3, 6], [4, 7]], dtype=np.int64)  # rows 0, 2, 3 use expert 3
    weights = random(rng, rows, 2)
    h = random(rng, rows, dim)

    def run(x, indices, weights, h):
        T = x.shape[0]
        scratch = [np.zeros((T, dim), np.float32), np.zeros(T, np.int64), np.zeros(T, np.float32),
                   np.zeros((T, width), np.float32), np.zeros((T, width), np.float32), np.zeros((T, dim), np.float32)]
        h = h.copy()
        expert_add(x, *matrices, expert, indices, weights, *scratch, h)
        return h

    together = run(x, indices, weights, h)
    dense = [bf16_to_f32(m) if dtype == "bf16" else m for m in matrices]
    routed = (indices == expert).any(axis=1)
    weight = np.where(indices == expert, weights, 0).sum(axis=1)
    expected = h + weight[:, None] * swiglu(x, *dense)
    np.testing.assert_allclose(together, expected, rtol=1e-4, atol=ATOL)
    np.testing.assert_array_equal(together[~routed], h[~routed])
    for t in np.flatnonzero(routed):
        alone = run(x[t : t + 1], indices[t : t + 1], weights[t : t + 1], h[t : t + 1])
        np.testing.assert_array_equal(alone[0], together[t])


@pytest.mark.parametrize("start, rows", [(0, 1), (1, 3), (2, 1), (37, 5), (300, 2)])
def test_engram_kernels_equal_engram_layer(start, rows):
    """engram_lookup and engram_add against EngramState.prepare and EngramLayer.forward, on the
    Engram fixture's real tables with random token ids and a random residual stream. Rows and
    gathered values must match exactly; the output within ATOL (float32 sums in another order)."""
    from pathlib import Path

    from minillm import LLM
    from minillm.engine.numba_forward import FastEngram
    from minillm.kernels.engram import engram_add, engram_lookup
    from minillm.model.engram import EngramState

    model = LLM.from_directory(Path(__file__).parent / "fixtures" / "torch" / "engram_small", backend="numpy")
    (index, layer), = model.transformer.engram.items()
    fast = FastEngram.build(layer)
    rng = np.random.default_rng(start + rows)
    D, end = model.config.hidden_size, start + rows
    ids = rng.integers(0, model.config.vocab_size, size=end)
    positions = np.arange(start, end)

    reference = EngramState(model.transformer.engram, D, end)
    if start:
        reference.prepare(ids[:start], np.arange(start))
    history = rng.standard_normal((end, D)).astype(np.float32)  # earlier positions' conv inputs
    reference.history[index][:start] = history[:start]
    gathered = reference.prepare(ids[start:], positions)[index]
    h = random(rng, rows, D)
    expected = h + layer.forward(h, gathered, reference.history[index], positions)

    state = EngramState(model.transformer.engram, D, end)
    state.record(ids, np.arange(end))
    state.history[index][:start] = history[:start]
    R = layer.offsets.size
    found, embedded = np.zeros((rows, R), np.int64), np.zeros((rows, gathered.shape[1]), np.float32)
    distinct = engram_lookup(state.ids, positions, *fast.lookup, found, embedded)
    back = layer.config.max_ngram_size - 1  # ids before the first new one that its n-grams read
    context = np.concatenate([np.full(max(0, back - start), -1), ids[max(0, start - back) : end]])
    np.testing.assert_array_equal(found, layer.rows(context, rows))
    assert distinct == np.unique(found).size
    np.testing.assert_array_equal(embedded, gathered)
    scratch = [np.zeros((rows, D), np.float32) for _ in range(3)]
    engram_add(h, embedded, positions, *fast.weights, state.history[index], *scratch)
    np.testing.assert_allclose(h, expected, rtol=1e-4, atol=ATOL)
    np.testing.assert_allclose(state.history[index][start:end], reference.history[index][start:end], atol=1e-5)
    model.close()
