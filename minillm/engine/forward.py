"""The forward pass the generation loop calls, behind one interface for both backends.

`NumpyForward` is the reference: every call goes through `Transformer` and `MTP`, which read as
the equations do. `minillm.engine.numba_forward.NumbaForward` computes decode and verification
steps with Numba kernels over preallocated buffers, and hands everything else (prefill, tracing)
to the NumPy path. Both give the same greedy tokens (tests/test_numba_forward.py).
"""

from __future__ import annotations

import os

import numpy as np

from minillm.errors import GenerationError

BACKENDS = ("numba", "numpy")


class NumpyForward:
    """Decode and draft steps on the plain NumPy engine."""

    name = "numpy"

    def __init__(self, transformer, mtp=None):
        self.transformer = transformer
        self.mtp_module = mtp

    def decode(self, tokens: list[int], start: int, caches, engram=None) -> tuple[np.ndarray, np.ndarray]:
        """Run `tokens` at positions start.. after the cached ones (absorbed MLA).
        Returns final-normed hidden states (T, D) and logits (T, V)."""
        ids = np.asarray(tokens, dtype=np.int64)
        hidden = self.transformer.hidden_states(ids, np.arange(start, start + ids.size), caches, absorbed=True,
                                                engram=engram)
        return hidden, self.transformer.logits(hidden)

    def mtp(self, hidden: np.ndarray, next_ids: np.ndarray, positions: np.ndarray, cache,
            absorbed: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Run the MTP module (see `MTP.forward`): its block output (T, D), and the draft logits
        (1, V) of the last row, the only one a draft comes from, over the draft vocabulary."""
        y, logits = self.mtp_module.forward(hidden, next_ids, positions, cache, absorbed,
                                            vocab=self.mtp_module.draft_vocab)
        return y, logits[-1:]


def default_threads() -> int:
    """Threads for prefill's BLAS and Numba: the CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def make_forward(backend: str, transformer, mtp=None, threads: int | None = None):
    """Build the forward pass for `backend` ("numba" or "numpy")."""
    if backend not in BACKENDS:
        raise GenerationError(f"invalid backend {backend!r}: use 'numba' or 'numpy'")
    if threads is not None and not (isinstance(threads, int) and threads >= 1):
        raise GenerationError(f"invalid thread count {threads!r}: use a positive integer")
    if backend == "numpy":
        return NumpyForward(transformer, mtp)
    from minillm.engine.numba_forward import NumbaForward

    forward = NumbaForward(transformer, mtp)
    forward.warm_up()
    return forward
