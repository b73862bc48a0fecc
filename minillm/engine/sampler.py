"""Next-token sampling: greedy, temperature, top-k and top-p (nucleus), reproducible from a seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minillm.errors import GenerationError
from minillm.kernels import sampling as sampling_kernels


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 means greedy (argmax)
    top_k: int = 0  # 0 disables top-k
    top_p: float = 1.0  # 1.0 disables top-p
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and np.isfinite(self.temperature) and self.temperature >= 0):
            raise GenerationError(f"invalid temperature {self.temperature!r}: use 0 for greedy or a positive number")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise GenerationError(f"invalid top_k {self.top_k!r}: use 0 to disable or a positive integer")
        if self.seed is not None and not (isinstance(self.seed, int) and self.seed >= 0):
            raise GenerationError(f"invalid seed {self.seed!r}: use a non-negative integer")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise GenerationError(f"invalid top_p {self.top_p!r}: use a number in (0, 1]; 1 disables it")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def probabilities(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Return the distribution (V,) that sampling draws from: temperature, then top-k, then top-p, renormalised."""
    scaled = logits.astype(np.float64) / params.temperature
    if 0 < params.top_k < scaled.size:
        kth = np.partition(scaled, -params.top_k)[-params.top_k]
        scaled = np.where(scaled >= kth, scaled, -np.inf)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        # keep the smallest prefix whose mass reaches top_p; the most likely token always stays
        keep = int(np.searchsorted(cumulative, params.top_p)) + 1
        mask = np.zeros_like(probs, dtype=bool)
        mask[order[:keep]] = True
        probs = np.where(mask, probs, 0.0)
        probs /= probs.sum()
    return probs


class Sampler:
    """Draws tokens from logits. With `kernels`, the distribution and the draw run as Numba kernels
    (minillm/kernels/sampling.py) into buffers made once. Given the same random stream, they pick
    the same token as the NumPy code."""

    def __init__(self, params: SamplingParams, kernels: bool = False):
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        self.kernels = kernels
        self._buffers: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def distribution(self, logits: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Return the distribution (V,) float64 that sampling draws from; see `probabilities`."""
        if not self.kernels:
            return probabilities(logits, self.params)
        if self._buffers is None or self._buffers[0].size != logits.size:
            V = logits.size
            self._buffers = (np.empty(V), np.empty(V, dtype=np.int64), np.empty(V))
        probs, order, work = self._buffers
        out = probs if out is None else out
        p = self.params
        sampling_kernels.distribution_into(logits, float(p.temperature), p.top_k, float(p.top_p), out, order, work)
        return out

    def draw(self, probs: np.ndarray) -> int:
        """Draw a token id from a distribution (V,), consuming one uniform number of the stream."""
        if not self.kernels:
            return int(self.rng.choice(probs.size, p=probs))
        return int(sampling_kernels.draw(probs, self.rng.random()))

    def __call__(self, logits: np.ndarray) -> int:
        """Pick the next token id from logits (V,). The returned distribution buffer is reused."""
        if self.params.greedy:
            return int(np.argmax(logits))
        return self.draw(self.distribution(logits))
