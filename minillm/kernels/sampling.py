"""Next-token sampling as Numba kernels: the distribution (temperature, top-k, top-p) and the draw.

`distribution_into` computes in float64 what `minillm.engine.sampler.probabilities` computes,
step for step: scale by 1/temperature, keep the top_k largest (ties at the k-th value stay), softmax,
then keep the smallest set of most likely tokens whose mass reaches top_p and renormalise.
`draw` is NumPy's `Generator.choice(V, p=probs)`: given the same uniform u = rng.random(), it
returns the first token whose cumulative probability exceeds u. Fed the same logits and u, both
paths pick the same token (tests/test_kernels.py). Neither allocates: the caller passes a float64
buffer for the distribution and an int64 one for the ordering.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _kth_largest(values, k, work):  # pragma: no cover - compiled
    """Return the k-th largest of values (n,), found by quickselect on a copy in work (n,) float64."""
    n = values.size
    for i in range(n):
        work[i] = values[i]
    target = n - k  # its index in ascending order
    lo, hi = 0, n - 1
    while lo < hi:
        pivot = work[(lo + hi) // 2]
        i, j = lo, hi
        while i <= j:
            while work[i] < pivot:
                i += 1
            while work[j] > pivot:
                j -= 1
            if i <= j:
                work[i], work[j] = work[j], work[i]
                i += 1
                j -= 1
        if target <= j:
            hi = j
        elif target >= i:
            lo = i
        else:
            break
    return work[target]


@njit(cache=True)
def _before(probs, a, b):  # pragma: no cover - compiled
    """Tell whether token a comes before token b in descending probability, ties by ascending id."""
    return probs[a] > probs[b] or (probs[a] == probs[b] and a < b)


@njit(cache=True)
def _sift(probs, order, root, end):  # pragma: no cover - compiled
    """Restore the heap below root in order[:end], whose top is the token that comes first."""
    while 2 * root + 1 < end:
        child = 2 * root + 1
        if child + 1 < end and _before(probs, order[child + 1], order[child]):
            child += 1
        if not _before(probs, order[child], order[root]):
            return
        order[root], order[child] = order[child], order[root]
        root = child


@njit(cache=True)
def _nucleus(probs, order, top_p):  # pragma: no cover - compiled
    """Zero every token outside the smallest most-likely set whose mass reaches top_p.

    Takes tokens off a heap in descending order only until the mass is reached: a few dozen
    usually, not a sort of the whole vocabulary."""
    n = 0
    for i in range(probs.size):
        if probs[i] > 0.0:
            order[n] = i
            n += 1
    for start in range(n // 2 - 1, -1, -1):
        _sift(probs, order, start, n)
    end = n
    cumulative = 0.0
    while end > 0:
        top = order[0]
        end -= 1
        order[0], order[end] = order[end], top  # taken tokens gather at order[end:n]
        _sift(probs, order, 0, end)
        cumulative += probs[top]
        if cumulative >= top_p:  # the top token always stays
            break
    for j in range(end):
        probs[order[j]] = 0.0


@njit(cache=True)
def distribution_into(logits, temperature, top_k, top_p, probs, order, work):  # pragma: no cover - compiled
    """Write the sampling distribution of logits (V,) into probs (V,) float64.

    Scratch: order (V,) int64 and work (V,) float64. top_k 0 and top_p 1.0 disable those filters."""
    V = logits.size
    for i in range(V):
        probs[i] = np.float64(logits[i]) / temperature
    if 0 < top_k < V:
        kth = _kth_largest(probs, top_k, work)
        for i in range(V):
            if probs[i] < kth:
                probs[i] = -np.inf
    peak = probs[0]
    for i in range(V):
        peak = max(peak, probs[i])
    total = 0.0
    for i in range(V):
        probs[i] = np.exp(probs[i] - peak)
        total += probs[i]
    for i in range(V):
        probs[i] /= total
    if top_p >= 1.0:
        return
    _nucleus(probs, order, top_p)
    total = 0.0
    for i in range(V):
        total += probs[i]
    for i in range(V):
        probs[i] /= total


@njit(cache=True)
def draw(probs, u):  # pragma: no cover - compiled
    """Return the first token whose cumulative probability, over the total, exceeds u in [0, 1)."""
    total = 0.0
    for i in range(probs.size):
        total += probs[i]
    running = 0.0
    for i in range(probs.size):
        running += probs[i]
        if running / total > u:
            return i
    return probs.size - 1
