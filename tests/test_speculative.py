"""MTP speculative decoding: greedy output identical to plain decoding, sampled output distributed
as plain sampling, and caches rolled back after rejected drafts."""

import math

import numpy as np
import pytest

import minillm
from minillm.engine.speculative import accept_draft
from minillm.errors import GenerationError

from helpers import TINY_V3, write_checkpoint, write_tokenizer

MTP_CONFIG = {**TINY_V3, "num_nextn_predict_layers": 1}


@pytest.fixture(scope="module")
def mtp_model(tmp_path_factory):
    directory = write_checkpoint(tmp_path_factory.mktemp("tiny_mtp"), MTP_CONFIG, seed=4)
    write_tokenizer(directory)
    return minillm.load(directory)


def plain_greedy(model, prompt, n):
    return list(model.generate_ids(prompt, max_new_tokens=n, temperature=0, stop_at_eos=False, speculative="none"))


class OracleMTP:
    """Stands in for the MTP module: drafts the known greedy continuation, except at positions in
    `wrong`, where it drafts a different token. Lets tests reach full and partial acceptance."""

    def __init__(self, sequence, vocab, wrong=()):
        self.sequence, self.vocab, self.wrong = sequence, vocab, set(wrong)

    def forward(self, hidden, next_ids, positions, cache=None, absorbed=True):
        cache.append(np.zeros((len(positions), cache.data.shape[1]), dtype=np.float32))
        logits = np.zeros((len(positions), self.vocab), dtype=np.float32)
        for row, position in enumerate(positions):
            target = position + 2
            token = self.sequence[target] if target < len(self.sequence) else 0
            logits[row, (token + 1) % self.vocab if target in self.wrong else token] = 1.0
        return hidden, logits


def test_checkpoint_mtp_loaded_and_default(mtp_model):
    assert mtp_model.mtp is not None
    assert mtp_model.resolve_speculative("auto") == "mtp"


@pytest.mark.parametrize("draft_tokens", [1, 2, 3])
def test_greedy_identical_on_many_prompts(mtp_model, draft_tokens):
    rng = np.random.default_rng(draft_tokens)
    for trial in range(50):
        prompt = rng.integers(2, MTP_CONFIG["vocab_size"], size=int(rng.integers(1, 40))).tolist()
        expected = plain_greedy(mtp_model, prompt, 20)
        got = list(mtp_model.generate_ids(prompt, max_new_tokens=20, temperature=0, stop_at_eos=False,
                                          speculative="mtp", draft_tokens=draft_tokens))
        assert got == expected, f"prompt {trial} of length {len(prompt)}"
        assert mtp_model.last_stats.draft_tokens > 0


@pytest.mark.parametrize("draft_tokens, wrong", [(1, ()), (3, ()), (2, range(0, 200, 3)), (3, range(0, 200, 4))])
def test_greedy_identical_when_drafts_accepted(mtp_model, monkeypatch, draft_tokens, wrong):
    prompt = [0, 9, 33, 71, 5]
    expected = plain_greedy(mtp_model, prompt, 40)[:30]  # the oracle must know tokens past the end too
    oracle = OracleMTP(prompt + plain_greedy(mtp_model, prompt, 40), MTP_CONFIG["vocab_size"], wrong)
    monkeypatch.setattr(mtp_model, "mtp", oracle)
    monkeypatch.setattr(mtp_model.forward, "mtp", oracle.forward)  # drafts come through the backend
    got = list(mtp_model.generate_ids(prompt, max_new_tokens=30, temperature=0, stop_at_eos=False,
                                      speculative="mtp", draft_tokens=draft_tokens))
    assert got == expected
    stats = mtp_model.last_stats
    if not wrong:
        assert stats.acceptance_rate == 1.0
        assert stats.tokens_per_forward == pytest.approx(draft_tokens + 1, rel=0.15)
    else:
        assert 0 < stats.acceptance_rate < 1


def test_caches_rolled_back_after_rejection(mtp_model, monkeypatch):
    prompt = [0, 4, 8, 15, 16, 23, 42]
    expected = plain_greedy(mtp_model, prompt, 12)
    oracle = OracleMTP(prompt + expected, MTP_CONFIG["vocab_size"], wrong=range(200))
    monkeypatch.setattr(mtp_model, "mtp", oracle)
    monkeypatch.setattr(mtp_model.forward, "mtp", oracle.forward)
    kv_caches = []
    original = mtp_model.plan.new_kv_cache
    monkeypatch.setattr(mtp_model.plan, "new_kv_cache", lambda *args: kv_caches.append(original(*args)) or kv_caches[-1])
    got = list(mtp_model.generate_ids(prompt, max_new_tokens=12, temperature=0, stop_at_eos=False,
                                      speculative="mtp", draft_tokens=3))
    assert got == expected
    assert mtp_model.last_stats.accepted_tokens == 0
    # every rejected draft was dropped: the cache contains the prompt and the tokens fed back so far
    assert kv_caches[0].lengths == [len(prompt) + len(expected) - 1] * MTP_CONFIG["num_hidden_layers"]


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_drafts_come_from_draft_vocabulary(mtp_model, backend):
    """With draft_vocab N every draft is a token id below N, and output stays plain greedy."""
    directory = mtp_model.path
    model = minillm.load(directory, backend=backend, draft_vocab=5)
    drafts = []
    original = model.forward.mtp

    def recording(*args, **kwargs):
        y, logits = original(*args, **kwargs)
        drafts.append(int(np.argmax(logits[-1])))
        return y, logits

    model.forward.mtp = recording
    prompt = [0, 17, 40, 2, 99]
    got = list(model.generate_ids(prompt, max_new_tokens=20, temperature=0, stop_at_eos=False, speculative="mtp"))
    assert got == plain_greedy(model, prompt, 20)
    assert drafts
    assert max(drafts) < 5
    model.close()


@pytest.mark.parametrize("draft_vocab", [0, MTP_CONFIG["vocab_size"] + 1, 2.5])
def test_invalid_draft_vocabulary_rejected(mtp_model, draft_vocab):
    with pytest.raises(GenerationError, match="invalid draft vocabulary"):
        minillm.load(mtp_model.path, draft_vocab=draft_vocab)


def test_speculative_mtp_needs_mtp_weights(tiny_model_dir):
    model = minillm.load(tiny_model_dir)
    assert model.resolve_speculative("auto") == "none"
    with pytest.raises(GenerationError, match="stores no MTP module"):
        list(model.generate_ids([0, 1], speculative="mtp"))
    with pytest.raises(GenerationError, match="invalid speculative mode 'eagle'"):
        list(model.generate_ids([0, 1], speculative="eagle"))
    with pytest.raises(GenerationError, match="invalid draft_tokens 0"):
        list(model.generate_ids([0, 1], draft_tokens=0))


# --- distribution: speculative sampling must leave the output distribution unchanged ---

def chi_square_p_value(counts: np.ndarray, probs: np.ndarray) -> float:
    """Goodness-of-fit p-value, with the Wilson-Hilferty normal approximation of the chi-square tail."""
    keep = probs > 0
    expected = probs[keep] * counts.sum()
    statistic = float(((counts[keep] - expected) ** 2 / expected).sum())
    df = keep.sum() - 1
    z = ((statistic / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


def accept_always(p, q, draft, rng):
    return None


def resample_from_target(p, q, draft, rng):
    """A broken rule: on rejection, draws from p instead of max(0, p - q)."""
    if rng.random() * q[draft] < p[draft]:
        return None
    return int(rng.choice(p.size, p=p))


def sample_with_rule(rule, p, q, trials, seed=0):
    rng = np.random.default_rng(seed)
    counts = np.zeros(p.size)
    for _ in range(trials):
        draft = int(rng.choice(q.size, p=q))
        replacement = rule(p, q, draft, rng)
        counts[draft if replacement is None else replacement] += 1
    return counts


P = np.array([0.40, 0.25, 0.15, 0.10, 0.06, 0.04])
Q = np.array([0.10, 0.35, 0.05, 0.30, 0.15, 0.05])


def test_acceptance_rule_preserves_target_distribution():
    counts = sample_with_rule(accept_draft, P, Q, trials=20000)
    assert chi_square_p_value(counts, P) > 1e-3


@pytest.mark.parametrize("broken_rule", [accept_always, resample_from_target])
def test_broken_acceptance_rule_is_detected(broken_rule):
    counts = sample_with_rule(broken_rule, P, Q, trials=20000)
    assert chi_square_p_value(counts, P) < 1e-6


def test_end_to_end_sampling_matches_plain_distribution(mtp_model):
    """Joint distribution of the first two sampled tokens under speculative decoding, against the
    exact probabilities computed from the model; top-k 4 keeps it to 16 outcomes."""
    from minillm.engine.sampler import SamplingParams, probabilities

    prompt, params = [0, 12, 57, 3], SamplingParams(temperature=1.0, top_k=4)
    first = probabilities(mtp_model.logits(prompt)[-1], params)
    exact = {}
    for t1 in np.flatnonzero(first):
        second = probabilities(mtp_model.logits(prompt + [int(t1)])[-1], params)
        for t2 in np.flatnonzero(second):
            exact[(int(t1), int(t2))] = first[t1] * second[t2]
    outcomes = sorted(exact)
    counts = np.zeros(len(outcomes))
    for seed in range(3000):
        pair = tuple(mtp_model.generate_ids(prompt, max_new_tokens=2, temperature=1.0, top_k=4, seed=seed,
                                            stop_at_eos=False, speculative="mtp"))
        counts[outcomes.index(pair)] += 1
    assert mtp_model.last_stats.draft_tokens > 0
    assert chi_square_p_value(counts, np.array([exact[o] for o in outcomes])) > 1e-3
