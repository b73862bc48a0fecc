"""Matrix times a few rows, reading the weight matrix once: the decode and verify projections.

OpenBLAS's GEMM costs about 4.5x a GEMV for two rows of a 4096 x 256 matrix (224 us against 50 us,
one thread, numpy 2.4, 2-core x86-64), so verifying one MTP draft would cost more than decoding
two tokens one by one. This kernel walks each weight row once for all input rows: two rows cost
1.5x one row. The NumPy twin is `x @ w.T`; tests/test_kernels.py proves them equal.
"""

from __future__ import annotations

import numpy as np
from numba import njit

MAX_ROWS = 4  # above this, BLAS GEMM is as fast per row


@njit(cache=True, fastmath=True)
def _linear_rows(x, w, out):  # pragma: no cover - compiled
    # x (T, n) @ w (m, n).T -> out (T, m); fastmath lets LLVM vectorise the dot-product reduction
    rows, n = x.shape
    for o in range(w.shape[0]):
        for t in range(rows):
            acc = np.float32(0.0)
            for i in range(n):
                acc += w[o, i] * x[t, i]
            out[t, o] = acc


def linear_rows(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x (T, n) float32 @ w.T for a PyTorch-layout weight w (m, n) float32, for T <= MAX_ROWS."""
    if x.dtype != np.float32 or w.dtype != np.float32 or x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"linear_rows needs float32 (T, n) and (m, n), got {x.dtype}{x.shape}, {w.dtype}{w.shape}")
    out = np.empty((x.shape[0], w.shape[0]), dtype=np.float32)
    _linear_rows(np.ascontiguousarray(x), np.ascontiguousarray(w), out)
    return out


def linear_rows_reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Compute x @ w.T with NumPy: the reference twin of linear_rows."""
    return x @ w.T
