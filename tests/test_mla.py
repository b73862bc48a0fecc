"""Naive and absorbed MLA are one function; cached decode equals recomputing the whole sequence."""

import numpy as np
import pytest

import minillm
from minillm.config import ModelConfig
from minillm.engine.kv_cache import LatentCache
from minillm.model.mla import MLA, AttentionWeights
from minillm.model.rope import Rotary

from helpers import TINY_V3

# float32 round-off: the two paths sum the same products in different orders; values are O(1),
# so differences stay near 1e-6. 1e-5 leaves room without hiding a wrong formula (those are O(0.1)).
ATOL = 1e-5


def random_attention(config: ModelConfig, seed: int) -> AttentionWeights:
    rng = np.random.default_rng(seed)
    D, H = config.hidden_size, config.num_attention_heads

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    weights = AttentionWeights(
        kv_a=mat(config.latent_dim, D),
        kv_a_norm=(1 + 0.1 * rng.standard_normal(config.kv_lora_rank)).astype(np.float32),
        kv_b=mat(H * (config.qk_nope_head_dim + config.v_head_dim), config.kv_lora_rank),
        o=mat(D, H * config.v_head_dim),
    )
    if config.q_lora_rank is None:
        weights.q = mat(H * config.qk_head_dim, D)
    else:
        weights.q_a = mat(config.q_lora_rank, D)
        weights.q_a_norm = np.ones(config.q_lora_rank, dtype=np.float32)
        weights.q_b = mat(H * config.qk_head_dim, config.q_lora_rank)
    return weights


@pytest.mark.parametrize("q_lora_rank", [48, None])
@pytest.mark.parametrize("tokens", [1, 7, 40])
def test_naive_equals_absorbed(q_lora_rank, tokens):
    config = ModelConfig.from_dict({**TINY_V3, "q_lora_rank": q_lora_rank})
    mla = MLA(config, random_attention(config, seed=tokens), Rotary(config.rope, config.qk_rope_head_dim))
    x = np.random.default_rng(1).standard_normal((tokens, config.hidden_size)).astype(np.float32)
    positions = np.arange(tokens)
    naive = mla.forward(x, positions, absorbed=False)
    absorbed = mla.forward(x, positions, absorbed=True)
    assert naive.shape == (tokens, config.hidden_size)
    np.testing.assert_allclose(naive, absorbed, atol=ATOL, rtol=0)


def test_cached_decode_equals_full_attention():
    config = ModelConfig.from_dict(TINY_V3)
    mla = MLA(config, random_attention(config, seed=3), Rotary(config.rope, config.qk_rope_head_dim))
    x = np.random.default_rng(2).standard_normal((50, config.hidden_size)).astype(np.float32)
    full = mla.forward(x, np.arange(50))

    cache = LatentCache(config.latent_dim, capacity=4)  # small, so the cache has to grow
    prefill = mla.forward(x[:30], np.arange(30), cache, absorbed=False)
    steps = [mla.forward(x[t : t + 1], np.array([t]), cache, absorbed=True) for t in range(30, 50)]
    np.testing.assert_allclose(prefill, full[:30], atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.concatenate(steps), full[30:], atol=ATOL, rtol=0)
    assert cache.length == 50
    assert cache.nbytes == 50 * config.latent_dim * 4


def test_model_greedy_same_with_and_without_cache(tiny_model_dir):
    model = minillm.load(tiny_model_dir)
    prompt = [0, 17, 45, 99, 3, 250, 8]
    cached = list(model.generate_ids(prompt, max_new_tokens=24, temperature=0, stop_at_eos=False))

    # the same continuation by recomputing the whole sequence at every step, naive MLA, no cache
    ids = list(prompt)
    for _ in range(24):
        ids.append(int(np.argmax(model.logits(ids)[-1])))
    assert cached == ids[len(prompt):]
