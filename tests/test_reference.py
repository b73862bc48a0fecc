"""The engine against Hugging Face transformers' DeepseekV2/V3 on checked-in fixtures.

tools/make_reference.py built each fixture with transformers 5.25 in float32; see
tests/fixtures/README.md. No torch is needed here.
"""

from pathlib import Path

import numpy as np
import pytest

import minillm

FIXTURES = sorted(p for p in (Path(__file__).parent / "fixtures").iterdir() if (p / "reference.npz").is_file())
# Both sides compute in float32 with different summation orders; logits are O(1-10), so round-off
# stays near 1e-6. 1e-4 is the bound the engine promises; a wrong formula moves logits by > 1e-2.
LOGITS_ATOL = 1e-4


@pytest.fixture(scope="module", params=FIXTURES, ids=lambda p: p.name)
def case(request):
    reference = np.load(request.param / "reference.npz")
    return minillm.load(request.param), reference


def test_fixtures_present():
    assert len(FIXTURES) >= 9


def test_prompt_logits_match(case):
    model, ref = case
    logits = model.logits(ref["prompt_ids"])
    assert logits.dtype == np.float32
    assert np.abs(logits - ref["logits"]).max() <= LOGITS_ATOL


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_greedy_with_cache_matches(case, backend, monkeypatch):
    model, ref = case
    model = minillm.load(model.path, backend=backend)
    steps = []
    prefill, decode = model._prefill, model.forward.decode

    def record_prefill(*args):
        result = prefill(*args)
        steps.append(result.logits.copy())
        return result

    def record_decode(*args):
        hidden, logits = decode(*args)
        steps.append(logits[-1].copy())  # the numba backend reuses its buffers: copy now
        return hidden, logits

    monkeypatch.setattr(model, "_prefill", record_prefill)
    monkeypatch.setattr(model.forward, "decode", record_decode)
    ids = list(model.generate_ids(ref["prompt_ids"], max_new_tokens=32, temperature=0, stop_at_eos=False,
                                  speculative="none"))
    model.close()
    assert ids == ref["greedy_ids"].tolist()
    # the absorbed decode path reproduces every step's logits, not only the argmax
    assert np.abs(np.stack(steps[:32]) - ref["greedy_logits"]).max() <= LOGITS_ATOL


def test_greedy_without_cache_matches(case):
    model, ref = case
    ids = ref["prompt_ids"].tolist()
    for _ in range(32):
        ids.append(int(np.argmax(model.logits(ids)[-1])))
    assert ids[len(ref["prompt_ids"]):] == ref["greedy_ids"].tolist()
