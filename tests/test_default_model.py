"""The models in weights/. The default (DeepseekV3 + MTP + Engram) loads with no path and writes
English. The baseline (plain DeepseekV3 + MTP, no Engram) matches transformers."""

from pathlib import Path

import numpy as np
import pytest

import minillm

FIXTURE = Path(__file__).parent / "fixtures" / "default_model.npz"
BASELINE = minillm.DEFAULT_MODEL_DIR.parent / "minillm-tiny-baseline"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return minillm.load(cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    return minillm.load(BASELINE, cache_dir=tmp_path_factory.mktemp("cache"))


def test_default_model_architecture(model):
    assert model.path == minillm.DEFAULT_MODEL_DIR
    assert model.config.model_type == "deepseek_v3"
    assert model.config.scoring_func == "sigmoid"
    assert model.config.topk_method == "noaux_tc"
    assert model.mtp is not None
    assert model.config.engram is not None
    assert model.config.max_position_embeddings >= 16384
    assert (model.path / "model.safetensors").stat().st_size < 48 * 1000 * 1000


def test_baseline_is_a_plain_deepseek_v3(baseline):
    assert baseline.config.engram is None
    assert baseline.mtp is not None
    assert not any("engram" in name for name in baseline.checkpoint.names)


def test_baseline_logits_match_transformers(baseline):
    reference = np.load(FIXTURE)
    logits = baseline.logits(reference["prompt_ids"])
    # float32 on both sides from the same BF16 weights: round-off only (measured about 1e-5)
    assert np.abs(logits - reference["logits"]).max() <= 1e-4


def test_baseline_greedy_matches_transformers(baseline):
    reference = np.load(FIXTURE)
    for speculative in ("none", "mtp"):
        ids = list(baseline.generate_ids(reference["prompt_ids"], max_new_tokens=32, temperature=0,
                                         stop_at_eos=False, speculative=speculative))
        assert ids == reference["greedy_ids"].tolist(), speculative


def test_default_greedy_with_and_without_mtp(model):
    prompt = "The Mole had been working very hard all the morning"
    runs = [list(model.generate_ids(prompt, max_new_tokens=32, temperature=0, stop_at_eos=False,
                                    speculative=mode)) for mode in ("none", "mtp")]
    assert runs[0] == runs[1]


def test_generates_words(model):
    text = "".join(model.generate("Once upon a time", max_new_tokens=40, temperature=0.8, seed=1))
    words = text.split()
    assert len(words) >= 15
    assert sum(word.strip('.,;:!?"\'').isalpha() for word in words) >= 0.8 * len(words)


def test_transformers_loads_baseline(baseline):
    """With the `ref` extra: transformers' DeepseekV3ForCausalLM runs the baseline directory as is."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    reference = transformers.DeepseekV3ForCausalLM.from_pretrained(BASELINE, dtype=torch.float32)
    ids = baseline.tokenizer.encode("The Mole had been working very hard all the morning")
    with torch.no_grad():
        theirs = reference.eval()(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(baseline.logits(ids) - theirs).max() <= 1e-4
