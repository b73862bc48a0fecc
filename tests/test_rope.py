"""YaRN frequencies and the softmax scale against the published DeepSeek-V3 numbers."""

import math

import numpy as np
import pytest

from minillm.config import ModelConfig, RopeConfig
from minillm.model.rope import Rotary, inverse_frequencies

from helpers import TINY_V3

V3_YARN = RopeConfig(rope_type="yarn", theta=10000.0, factor=40.0, original_max_position_embeddings=4096,
                     beta_fast=32, beta_slow=1, mscale=1.0, mscale_all_dim=1.0)


def test_yarn_keeps_fast_and_divides_slow_dims():
    base, _ = inverse_frequencies(RopeConfig(theta=10000.0), 64)
    yarn, attention_factor = inverse_frequencies(V3_YARN, 64)
    # DeepSeek-V3: correction range low = 10, high = 23 pairs
    np.testing.assert_allclose(yarn[:10], base[:10], rtol=1e-6)
    np.testing.assert_allclose(yarn[23:], base[23:] / 40.0, rtol=1e-6)
    assert np.all(yarn[10:23] <= base[10:23])
    assert np.all(yarn[10:23] >= base[10:23] / 40.0)
    assert attention_factor == pytest.approx(1.0)


def test_v3_softmax_scale():
    config = ModelConfig.from_dict({**TINY_V3, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
                                    "rope_scaling": {"type": "yarn", "factor": 40, "mscale": 1.0,
                                                     "mscale_all_dim": 1.0,
                                                     "original_max_position_embeddings": 4096}})
    assert config.softmax_scale == pytest.approx(192**-0.5 * (1 + 0.1 * math.log(40)) ** 2)
    assert config.softmax_scale == pytest.approx(0.1352338, abs=1e-7)


def test_rotation_preserves_pair_norms_and_relative_angle():
    rotary = Rotary(RopeConfig(), 8)
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((1, 8)).astype(np.float32), rng.standard_normal((1, 8)).astype(np.float32)
    rotated = rotary.apply(q, np.array([5]))
    np.testing.assert_allclose(np.hypot(rotated[0, 0::2], rotated[0, 1::2]), np.hypot(q[0, 0::2], q[0, 1::2]),
                               rtol=1e-5)
    # the score depends only on the distance between positions
    near = rotary.apply(q, np.array([7]))[0] @ rotary.apply(k, np.array([3]))[0]
    far = rotary.apply(q, np.array([1007]))[0] @ rotary.apply(k, np.array([1003]))[0]
    assert near == pytest.approx(far, rel=1e-3)
