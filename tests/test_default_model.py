"""The default model in weights/: it loads with no path, matches transformers, and writes English."""

from pathlib import Path

import numpy as np
import pytest

import minillm

FIXTURE = Path(__file__).parent / "fixtures" / "default_model.npz"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return minillm.load(cache_dir=tmp_path_factory.mktemp("cache"))


def test_default_model_is_a_deepseek_v3_with_mtp(model):
    assert model.path == minillm.DEFAULT_MODEL_DIR
    assert model.config.model_type == "deepseek_v3"
    assert model.config.scoring_func == "sigmoid"
    assert model.config.topk_method == "noaux_tc"
    assert model.mtp is not None
    assert model.config.max_position_embeddings >= 16384


def test_logits_match_transformers(model):
    reference = np.load(FIXTURE)
    logits = model.logits(reference["prompt_ids"])
    # float32 on both sides from the same BF16 weights: round-off only (measured about 1e-5)
    assert np.abs(logits - reference["logits"]).max() <= 1e-4


def test_greedy_matches_transformers(model):
    reference = np.load(FIXTURE)
    for speculative in ("none", "mtp"):
        ids = list(model.generate_ids(reference["prompt_ids"], max_new_tokens=32, temperature=0, stop_at_eos=False,
                                      speculative=speculative))
        assert ids == reference["greedy_ids"].tolist(), speculative


def test_generates_words(model):
    text = "".join(model.generate("Once upon a time", max_new_tokens=40, temperature=0.8, seed=1))
    words = text.split()
    assert len(words) >= 15
    assert sum(word.strip('.,;:!?"\'').isalpha() for word in words) >= 0.8 * len(words)


def test_transformers_loads_default_model(model):
    """With the `ref` extra: transformers' DeepseekV3ForCausalLM runs the shipped directory as is."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    reference = transformers.DeepseekV3ForCausalLM.from_pretrained(minillm.DEFAULT_MODEL_DIR, dtype=torch.float32)
    ids = model.tokenizer.encode("The Mole had been working very hard all the morning")
    with torch.no_grad():
        theirs = reference.eval()(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(model.logits(ids) - theirs).max() <= 1e-4
