"""Engram: hashing, the checkpoint's derived tensors, and the engine against the PyTorch model.

The fixture tests/fixtures/torch/engram_small comes from tools/make_engram_fixture.py (the training
model in tools/torch_engram.py); these tests need no torch, except the last one. Logit tolerance
1e-4: both sides compute in float32 from the same bf16-rounded weights, so they differ by
summation order only (measured: 1.9e-7 on logits up to 0.7).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from minillm import LLM
from minillm.config import ModelConfig
from minillm.errors import CheckpointError, ConfigError
from minillm.memory.tiers import MemoryConfig
from minillm.model.engram_hash import compress_vocabulary, is_prime, multipliers, ngram_indexes, table_sizes
from tokenizers import Tokenizer as HFTokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "torch" / "engram_small"
DEFAULT = Path(__file__).parent.parent / "weights" / "minillm-tiny"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference():
    return np.load(FIXTURE / "reference.npz")


@pytest.fixture(scope="module")
def model():
    llm = LLM.from_directory(FIXTURE)
    yield llm
    llm.close()


def prompt_indexes(reference) -> list[int]:
    return sorted(int(name.split("_")[1]) for name in reference.files if name.startswith("prompt_"))


def test_logits_equal_the_torch_model(model, reference):
    """Every prompt: BOS-first text, text without BOS, repeated ids and random ids."""
    for i in prompt_indexes(reference):
        ids = reference[f"prompt_{i}"]
        logits = model.logits(ids)[:, ::8]
        np.testing.assert_allclose(logits, reference[f"logits_{i}"], atol=TOLERANCE, rtol=0, err_msg=f"prompt {i}")


def test_cached_decode_equals_the_torch_model(model, reference):
    """Prefill 3 tokens, then one token per step through the absorbed path: the conv history and
    the token window carry over between steps."""
    ids = reference["prompt_0"]
    caches, state = model.new_caches(), model.new_engram_state()
    rows = [model.step(ids[:3], caches, absorbed=False, engram=state)]
    rows += [model.step(ids[t : t + 1], caches, absorbed=True, engram=state) for t in range(3, ids.size)]
    np.testing.assert_allclose(np.stack(rows)[:, ::8], reference["logits_0"][2:], atol=TOLERANCE, rtol=0)


def test_engram_changes_the_output(model, reference):
    """Guard against a test that cannot fail: without its Engram layer the model's logits differ."""
    ids = reference["prompt_1"]
    engram = model.transformer.engram
    model.transformer.engram = {}
    try:
        plain = model.logits(ids)
    finally:
        model.transformer.engram = engram
    assert np.abs(plain - model.logits(ids)).max() > 0.1


def test_hash_indexes_equal_the_trainer(model, reference):
    """10,000 random sequences of 12 ids, hashed by the torch trainer and by the engine."""
    layer = model.transformer.engram[1]
    sequences = reference["hash_sequences"].astype(np.int64)
    n_back = layer.config.max_ngram_size - 1
    padded = np.concatenate([np.full((sequences.shape[0], n_back), -1), sequences], axis=1)
    engine = np.stack([layer.rows(row, sequences.shape[1]) - layer.offsets for row in padded])
    np.testing.assert_array_equal(engine[:100], reference["hash_indexes_head"])
    assert hashlib.sha256(np.ascontiguousarray(engine, dtype=np.int64).tobytes()).digest() == \
        reference["hash_indexes_sha256"].tobytes()


@pytest.mark.parametrize("directory", [FIXTURE, DEFAULT], ids=["fixture", "default"])
def test_stored_derivations_equal_a_recomputation(directory):
    """The checkpoint's compressed-token map, multipliers and table sizes come from its tokenizer
    and seed; recompute them from scratch and compare."""
    llm = LLM.from_directory(directory)
    cfg = llm.config.engram
    assert cfg is not None, f"{directory} has no Engram block"
    compressed = compress_vocabulary(HFTokenizer.from_file(str(directory / "tokenizer.json")))
    sizes = table_sizes(list(cfg.layer_ids), cfg.max_ngram_size, cfg.n_head_per_ngram, list(cfg.engram_vocab_size))
    for layer_id, layer in llm.transformer.engram.items():
        np.testing.assert_array_equal(layer.w.compressed_ids, compressed)
        expected = multipliers(cfg.seed, layer_id, cfg.max_ngram_size, int(compressed.max()) + 1)
        np.testing.assert_array_equal(layer.w.multipliers, expected)
        assert layer.w.table_sizes.tolist() == sizes[layer_id]
    llm.close()


def test_compression_merges_case_and_spacing_variants():
    tokenizer = HFTokenizer.from_file(str(FIXTURE / "tokenizer.json"))
    compressed = compress_vocabulary(tokenizer)
    vocab = tokenizer.get_vocab()
    pairs = [(a, b) for a, b in (("The", "the"), ("ĠThe", "Ġthe"), ("ĠAnd", "Ġand")) if a in vocab and b in vocab]
    assert pairs
    for a, b in pairs:
        assert compressed[vocab[a]] == compressed[vocab[b]], (a, b)
    assert compressed.max() + 1 < tokenizer.get_vocab_size()  # some ids merged
    # numbered by first use: id 0 first, and each new id is one more than the largest so far
    assert compressed[0] == 0
    assert np.all(np.diff(np.maximum.accumulate(compressed)) <= 1)


def test_table_sizes_match_deepseek_demo():
    """Primes of DeepSeek's Engram demo (base 646400 per order, 8 heads, layers 1 and 15), as
    listed in docs/architecture.md's source notes: all distinct, layer 1 order 2 as computed there."""
    sizes = table_sizes([1, 15], 3, 8, [646400, 646400])
    assert sizes[1][:8] == [646403, 646411, 646421, 646423, 646433, 646453, 646519, 646523]
    assert sum(sizes[1]) == 10_344_164
    everything = sizes[1] + sizes[15]
    assert len(set(everything)) == 32 and all(is_prime(p) for p in everything)


def test_ngram_indexes_by_hand():
    """Order 2 and 3 mixes with int64 wrap-around, checked with Python integers."""
    mults = np.array([(1 << 61) + 1, 3, (1 << 40) + 7], dtype=np.int64)
    sizes = np.array([11, 13, 17, 19], dtype=np.int64)
    context = np.array([5, 9, 4000, 2], dtype=np.int64)  # two ids of history, then two tokens

    def wrap(v: int) -> int:
        return (v + (1 << 63)) % (1 << 64) - (1 << 63)

    expected = []
    for t in (2, 3):
        a, b, c = (wrap(int(context[t - k]) * int(mults[k])) for k in range(3))
        two, three = a ^ b, a ^ b ^ c
        expected.append([two % 11, two % 13, three % 17, three % 19])
    np.testing.assert_array_equal(ngram_indexes(context, 2, mults, sizes, heads=2), expected)


def test_repeated_ngrams_read_the_same_rows(model):
    layer = model.transformer.engram[1]
    ids = np.array([-1, -1] + [5, 6, 7] * 4)
    rows = layer.rows(ids, 12)
    np.testing.assert_array_equal(rows[3:6], rows[6:9])  # (5, 6, 7) repeats after the first period
    assert not np.array_equal(rows[0], rows[3])  # the first token's n-grams include padding


def test_prefix_cache_restores_engram_state(tmp_path, reference):
    """A second run reuses cached pages, which must carry Engram's convolution state too."""
    memory = MemoryConfig(cache_dir=tmp_path, page_tokens=4)
    llm = LLM.from_directory(FIXTURE, memory)
    prompt = reference["prompt_4"].tolist()
    first = list(llm.generate_ids(prompt, max_new_tokens=12, temperature=0))
    second = list(llm.generate_ids(prompt, max_new_tokens=12, temperature=0))
    assert llm.last_stats.prefix_cache_hit_tokens >= 16
    assert first == second
    llm.set_memory(MemoryConfig(cache_dir=tmp_path, page_tokens=4, prefix_cache=False))
    assert list(llm.generate_ids(prompt, max_new_tokens=12, temperature=0)) == first
    llm.close()


def test_stats_count_lookups_rows_and_bytes(model):
    model.set_memory(MemoryConfig(prefix_cache=False))  # counters restart
    prompt = [0, 5, 6, 7, 5, 6, 7]
    list(model.generate_ids(prompt, max_new_tokens=5, temperature=0))
    snapshot = model.last_snapshot
    tables = model.config.engram.tables
    tokens = len(prompt) + 4  # the last generated token is never fed back
    assert snapshot["engram_lookups"] == tokens * tables
    assert 0 < snapshot["engram_rows"] < snapshot["engram_lookups"]  # the repeated trigram is read once
    row_bytes = model.transformer.engram[1].w.table.stored[0].nbytes
    assert snapshot["engram_bytes_read"] == snapshot["engram_rows"] * row_bytes
    dram = snapshot["tiers"]["dram"]
    assert dram["used_by_kind"]["engram"] == model.transformer.engram[1].w.table.nbytes
    assert dram["bytes_out"] >= snapshot["engram_bytes_read"]


def test_plain_checkpoint_has_no_engram():
    config = ModelConfig.from_file(Path(__file__).parent.parent / "weights" / "minillm-tiny-baseline")
    assert config.engram is None


@pytest.mark.parametrize("key, value, words", [
    ("layer_ids", [9], "engram.layer_ids"),
    ("max_ngram_size", 1, "engram.max_ngram_size=1"),
    ("engram_vocab_size", [100], "one base size per n-gram order"),
    ("n_embed_per_ngram", 30, "multiple of n_head_per_ngram"),
    ("pad_id", 99999, "engram.pad_id=99999"),
])
def test_bad_engram_block_names_key_and_value(key, value, words):
    raw = json.loads((FIXTURE / "config.json").read_text())
    raw["engram"][key] = value
    with pytest.raises(ConfigError, match=words.replace("[", r"\[")):
        ModelConfig.from_dict(raw)


def test_mismatched_table_sizes_are_refused(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(FIXTURE, folder)
    raw = json.loads((folder / "config.json").read_text())
    raw["engram"]["engram_vocab_size"] = [800, 900]  # other primes: the stored tables no longer fit
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="config.json"):
        LLM.from_directory(folder)


def test_live_torch_model_matches(model):
    """With torch installed: a fresh build of the fixture model gives the same full-vocabulary
    logits, and its hash indexes equal the engine's on new random sequences."""
    torch = pytest.importorskip("torch")
    from tools.make_engram_fixture import build_model

    torch_model, _ = build_model(Path(__file__).parent.parent / "weights" / "minillm-tiny-baseline")
    ids = np.random.default_rng(5).integers(0, torch_model.config.vocab_size, 64)
    ids[20:40] = np.tile(ids[:4], 5)  # repeated n-grams
    with torch.no_grad():
        theirs = torch_model(torch.from_numpy(ids)[None])["logits"][0].numpy()
        sequences = np.random.default_rng(6).integers(0, torch_model.config.vocab_size, (1000, 9))
        indexes = torch_model.engram_modules()[0].hash(torch.from_numpy(sequences)).numpy()
    np.testing.assert_allclose(model.logits(ids), theirs, atol=TOLERANCE, rtol=0)
    layer = model.transformer.engram[1]
    padded = np.concatenate([np.full((1000, 2), -1), sequences], axis=1)
    np.testing.assert_array_equal(np.stack([layer.rows(row, 9) - layer.offsets for row in padded]), indexes)
