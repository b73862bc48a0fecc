"""Sampling: greedy, top-k, top-p, seeds, and errors for invalid settings."""

import numpy as np
import pytest

from minillm.engine.sampler import Sampler, SamplingParams, probabilities
from minillm.errors import GenerationError

LOGITS = np.log(np.array([0.5, 0.25, 0.15, 0.1], dtype=np.float32))


def test_greedy_is_argmax():
    assert Sampler(SamplingParams(temperature=0))(LOGITS) == 0


def test_top_k_keeps_k_most_likely():
    probs = probabilities(LOGITS, SamplingParams(temperature=1.0, top_k=2))
    np.testing.assert_allclose(probs, [2 / 3, 1 / 3, 0, 0], rtol=1e-6)


def test_top_p_keeps_smallest_prefix_reaching_mass():
    probs = probabilities(LOGITS, SamplingParams(temperature=1.0, top_p=0.7))
    np.testing.assert_allclose(probs, [0.5 / 0.75, 0.25 / 0.75, 0, 0], rtol=1e-6)
    only_top = probabilities(LOGITS, SamplingParams(temperature=1.0, top_p=0.01))
    np.testing.assert_allclose(only_top, [1, 0, 0, 0])


def test_temperature_sharpens():
    cold = probabilities(LOGITS, SamplingParams(temperature=0.5))
    assert cold[0] > 0.5
    assert cold.sum() == pytest.approx(1.0)


def test_seed_reproducible_and_frequencies_match():
    params = SamplingParams(temperature=1.0, seed=7)
    first = [Sampler(params)(LOGITS) for _ in range(3)]
    sampler_a, sampler_b = Sampler(params), Sampler(params)
    assert [sampler_a(LOGITS) for _ in range(50)] == [sampler_b(LOGITS) for _ in range(50)]
    assert len(set(first)) == 1
    sampler = Sampler(SamplingParams(temperature=1.0, seed=1))
    counts = np.bincount([sampler(LOGITS) for _ in range(4000)], minlength=4) / 4000
    # 4000 draws: the standard error of each frequency is below 0.008, so 0.03 is about 4 sigma
    np.testing.assert_allclose(counts, [0.5, 0.25, 0.15, 0.1], atol=0.03)


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -1.0}, "invalid temperature -1.0"),
    ({"temperature": float("nan")}, "invalid temperature nan"),
    ({"top_k": -3}, "invalid top_k -3"),
    ({"top_p": 0.0}, "invalid top_p 0.0"),
    ({"top_p": 1.5}, "invalid top_p 1.5"),
    ({"seed": -1}, "invalid seed -1"),
])
def test_invalid_settings(kwargs, message):
    with pytest.raises(GenerationError, match=message):
        SamplingParams(**kwargs)


SETTINGS = [dict(temperature=0.8), dict(temperature=1.0, top_k=40), dict(temperature=0.7, top_p=0.9),
            dict(temperature=0.8, top_k=40, top_p=0.95), dict(temperature=1.3, top_k=1),
            dict(temperature=0.5, top_k=7, top_p=0.3)]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_kernel_distribution_equals_probabilities(settings):
    """The Numba kernel against its NumPy twin, including tied logits at the top-k boundary.
    Tolerance 1e-12: both sum float64 values, in a different order (NumPy's sum is pairwise)."""
    params = SamplingParams(**settings)
    rng = np.random.default_rng(3)
    sampler = Sampler(params, kernels=True)
    for vocabulary in (4096, 1000, 3):
        logits = (rng.standard_normal(vocabulary) * 3).astype(np.float32)
        logits[: vocabulary // 3] = np.round(logits[: vocabulary // 3])  # many exact ties
        np.testing.assert_allclose(sampler.distribution(logits), probabilities(logits, params), rtol=0, atol=1e-12)


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_kernel_sampler_draws_the_same_tokens(settings):
    """Same seed, same logits: the kernel path and the NumPy path pick the same token every time."""
    rng = np.random.default_rng(4)
    numpy_path = Sampler(SamplingParams(**settings, seed=11))
    kernel_path = Sampler(SamplingParams(**settings, seed=11), kernels=True)
    for _ in range(300):
        logits = (rng.standard_normal(512) * 2).astype(np.float32)
        assert kernel_path(logits) == numpy_path(logits)
