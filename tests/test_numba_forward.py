"""The numba backend against the NumPy reference: same greedy tokens, close logits, no allocation.

Logit tolerance 1e-4: both backends compute in float32 from the same weights and differ only in
summation order (measured: under 3e-6 on logits of size up to about 20 on the default model).
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import minillm
from minillm import LLM, GenerationError
from minillm.engine.numba_forward import NumbaForward
from minillm.memory.tiers import MemoryConfig

ROOT = Path(__file__).parent.parent
DEFAULT = ROOT / "weights" / "minillm-tiny"
BASELINE = ROOT / "weights" / "minillm-tiny-baseline"
FIXTURES = sorted(p.parent for p in (ROOT / "tests" / "fixtures").glob("*/reference.npz"))
ENGRAM_FIXTURE = ROOT / "tests" / "fixtures" / "torch" / "engram_small"
TOLERANCE = 1e-4
PROMPTS = ["Once upon a time", "The little rabbit ran into the woods and", "\"Where are you going?\" asked the",
           "It was a dark and stormy night; the rain fell in torrents", "Mole", "The End."]


@pytest.fixture(scope="module", params=[DEFAULT, BASELINE], ids=["default", "baseline"])
def pair(request):
    models = {backend: minillm.load(request.param, prefix_cache=False, backend=backend)
              for backend in ("numba", "numpy")}
    yield models
    for model in models.values():
        model.close()


def greedy(model, prompt, n=40, **options):
    return list(model.generate_ids(prompt, max_new_tokens=n, temperature=0, stop_at_eos=False, **options))


def test_default_backend_is_numba():
    model = minillm.load(BASELINE, prefix_cache=False)
    assert isinstance(model.forward, NumbaForward)
    model.close()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_tokens_equal_across_backends(pair, prompt):
    expected = greedy(pair["numpy"], prompt, speculative="none")
    assert greedy(pair["numba"], prompt, speculative="none") == expected
    for k in (1, 2, 3):
        assert greedy(pair["numba"], prompt, speculative="mtp", draft_tokens=k) == expected


def decode_logits(model, ids, steps):
    """Logits of `steps` single-token decode steps after a prefill of ids[:len(ids) - steps]."""
    prompt = len(ids) - steps
    caches = model.new_caches()
    engram = model.new_engram_state()
    model.step(np.asarray(ids[:prompt]), caches, absorbed=False, engram=engram)
    rows = []
    for position in range(prompt, len(ids)):
        hidden, logits = model.forward.decode([ids[position]], position, caches, engram)
        rows.append(logits[-1].copy())
    return np.stack(rows)


def test_decode_logits_close(pair):
    ids = pair["numpy"].tokenizer.encode(PROMPTS[3] + " and the wind howled through the trees")
    expected = decode_logits(pair["numpy"], ids, 12)
    assert np.abs(decode_logits(pair["numba"], ids, 12) - expected).max() <= TOLERANCE


def test_verify_rows_equal_single_steps(pair):
    """Verifying 4 tokens in one step gives each position the logits of decoding it alone, bit for
    bit: every kernel computes each row by itself (see matmul_into)."""
    model = pair["numba"]
    ids = model.tokenizer.encode(PROMPTS[1])
    singles = decode_logits(model, ids, 4)
    caches, engram = model.new_caches(), model.new_engram_state()
    model.step(np.asarray(ids[:-4]), caches, absorbed=False, engram=engram)
    _, together = model.forward.decode(ids[-4:], len(ids) - 4, caches, engram)
    np.testing.assert_array_equal(together, singles)


def test_draft_logits_close_over_draft_vocabulary(pair):
    """The MTP step's draft logits: close on the draft vocabulary, -inf past it, on both backends."""
    drafts = {}
    for backend, model in pair.items():
        ids = model.tokenizer.encode(PROMPTS[2])
        caches, engram = model.new_caches(), model.new_engram_state()
        model.step(np.asarray(ids[:-1]), caches, absorbed=False, engram=engram)
        hidden, _ = model.forward.decode(ids[-1:], len(ids) - 1, caches, engram)
        cache = model.new_caches(capacity=8)[0]
        _, logits = model.forward.mtp(hidden, np.array([ids[-1]]), np.array([len(ids) - 1]), cache)
        drafts[backend] = logits.copy()
    vocab = pair["numba"].mtp.draft_vocab
    assert vocab == pair["numba"].config.vocab_size // 4
    assert np.all(drafts["numba"][:, vocab:] == -np.inf)
    assert np.all(drafts["numpy"][:, vocab:] == -np.inf)
    assert np.abs(drafts["numba"][:, :vocab] - drafts["numpy"][:, :vocab]).max() <= TOLERANCE


@pytest.mark.parametrize("directory", FIXTURES + [ENGRAM_FIXTURE], ids=lambda p: p.name)
def test_fixture_checkpoints_agree(directory):
    """Every architecture variant the fixtures cover: softmax and sigmoid routers, no query LoRA,
    tied embeddings, dense prefix layers, float32 and BF16 storage, Engram."""
    reference = np.load(directory / "reference.npz")
    ids = reference["prompt_ids" if "prompt_ids" in reference else "prompt_0"].reshape(-1)[:12].tolist()
    outputs = {}
    for backend in ("numba", "numpy"):
        model = LLM.from_directory(directory, backend=backend)
        outputs[backend] = (greedy(model, ids, n=12, speculative="none"), decode_logits(model, ids, 4))
        model.close()
    assert outputs["numba"][0] == outputs["numpy"][0]
    assert np.abs(outputs["numba"][1] - outputs["numpy"][1]).max() <= TOLERANCE


KERNELS = ["mla_project", "mla_finish", "final_logits", "route_into", "swiglu_add", "expert_add", "engram_lookup",
           "engram_add", "mtp_input"]


@pytest.mark.parametrize("directory", [DEFAULT, BASELINE], ids=["default", "baseline"])
def test_decode_step_allocates_no_arrays(directory, monkeypatch):
    """100 steady-state decode steps allocate no arrays, on either side of the Python/Numba line.

    Python side: no step's traced memory peaks by 8 KiB or more. A step's smallest model-sized
    output, the logits, is 16 KiB, and the NumPy backend peaks at about 19 KiB; what stays under
    the bound are Python objects (argument boxing, views). Numba side: allocations go through
    Numba's runtime, which tracemalloc does not see. Passing an array into a kernel allocates one
    record there, so the runtime's count must equal the array arguments passed, no more."""
    from numba.core.runtime import _nrt_python, rtsys

    import minillm.engine.numba_forward as numba_forward

    # hbm has room for every expert, so no step streams one in (a miss copies it, which is the point of a miss)
    memory = MemoryConfig.from_strings("256MiB", None, None, None, page_tokens=256, prefix_cache=False)
    model = LLM.from_directory(directory, memory)
    ids = np.asarray(model.tokenizer.encode(PROMPTS[3]))
    kv = model.plan.new_kv_cache(model.config.num_hidden_layers, model.config.latent_dim)
    caches = [kv.layer_view(layer) for layer in range(model.config.num_hidden_layers)]
    engram = model.new_engram_state(512)
    token = int(np.argmax(model._prefill(ids, kv, caches, engram).logits))

    def step(token: int) -> int:
        _, logits = model.forward.decode([token], caches[0].length, caches, engram)
        return int(np.argmax(logits[-1]))

    try:
        for layer in model.transformer.weights.layers:  # stream every expert in now, not during the test
            for expert in range(model.config.n_routed_experts if hasattr(layer.ffn, "experts") else 0):
                layer.ffn.experts.get(expert)
        for _ in range(10):  # compile and warm up
            token = step(token)
        tracemalloc.start()
        worst = 0
        for _ in range(100):
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            token = step(token)
            worst = max(worst, tracemalloc.get_traced_memory()[1] - before)
        tracemalloc.stop()
        assert worst < 8192, f"a decode step's traced memory peaked {worst} bytes above its start"

        passed = [0]
        for name in KERNELS:
            kernel = getattr(numba_forward, name)

            def counting(*args, kernel=kernel):
                passed[0] += sum(isinstance(arg, np.ndarray) for arg in args)
                return kernel(*args)
            monkeypatch.setattr(numba_forward, name, counting)
        _nrt_python.memsys_enable_stats()
        before = rtsys.get_allocation_stats().alloc
        for _ in range(100):
            token = step(token)
        assert rtsys.get_allocation_stats().alloc - before == passed[0] > 0
    finally:
        _nrt_python.memsys_disable_stats()
        kv.close()
        model.close()


def test_invalid_backend_and_threads_are_refused():
    with pytest.raises(GenerationError, match="backend 'cuda'"):
        minillm.load(BASELINE, backend="cuda")
    with pytest.raises(GenerationError, match="thread count 0"):
        minillm.load(BASELINE, threads=0)


def test_tracing_uses_the_numpy_path(pair):
    """Tracing needs per-layer intermediates that the kernels do not keep: the step falls back."""
    model = pair["numba"]
    for attention in model.transformer.attention:
        attention.trace = True
    try:
        assert not model.forward._fast(1)
    finally:
        for attention in model.transformer.attention:
            attention.trace = False
    assert model.forward._fast(1)
