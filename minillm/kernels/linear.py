"""Matrix times a few rows, reading the weight matrix once: the decode and verify projections.

OpenBLAS's GEMM costs about 4.5x a GEMV for two rows of a 4096 x 256 matrix (224 us against 50 us,
one thread, numpy 2.4, 2-core x86-64), so verifying one MTP draft would cost more than decoding
two tokens one by one. `matmul_into` walks each weight row once per pair of input rows.

Weights come as float32 or as BF16 bit patterns (uint16). A decode step is bound by how fast the
weights stream from cache or memory, so reading BF16 halves its main cost; each value widens to
float32 exactly (the 16 bits become the high half of a float32), and sums stay float32.
`widen` picks the conversion by the weight's dtype when Numba compiles the caller.
NumPy twins: `x @ w.T` and `minillm.io.safetensors.bf16_to_f32`; tests/test_kernels.py proves them equal.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from minillm.io.safetensors import bf16_to_f32
from minillm.kernels.flags import FAST_MATH


def float32_to_bf16(values: np.ndarray) -> np.ndarray | None:
    """BF16 bit patterns of float32 values when every value is exactly a BF16 number, else None."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    if np.any(bits & 0xFFFF):
        return None
    return (bits >> 16).astype(np.uint16)


@intrinsic
def _widen(typingctx, bits):
    """float32 whose bit pattern is `bits` (uint16) shifted into the high half."""
    signature = types.float32(types.uint16)

    def codegen(context, builder, sig, args):
        wide = builder.shl(builder.zext(args[0], ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
        return builder.bitcast(wide, ir.FloatType())

    return signature, codegen


def widen(value):
    """float32 of a stored value: a float32 as it is, a BF16 bit pattern (uint16) widened."""
    return float(bf16_to_f32(np.asarray(value, dtype=np.uint16))) if isinstance(value, np.uint16) else value


@overload(widen)
def _widen_any(value):  # pragma: no cover - compiled
    if value == types.uint16:
        return lambda value: _widen(value)
    return lambda value: value


@njit(cache=True, fastmath=FAST_MATH)
def _four_outputs(x, t, w, row, out):  # pragma: no cover - compiled
    """out[t, row:row+4] = x[t] @ w[row:row+4].T: four weight rows stream at once, and each x value
    loads once for all four."""
    a0 = np.float32(0.0)
    a1 = np.float32(0.0)
    a2 = np.float32(0.0)
    a3 = np.float32(0.0)
    for i in range(x.shape[1]):
        xi = x[t, i]
        a0 += widen(w[row, i]) * xi
        a1 += widen(w[row + 1, i]) * xi
        a2 += widen(w[row + 2, i]) * xi
        a3 += widen(w[row + 3, i]) * xi
    out[t, row] = a0
    out[t, row + 1] = a1
    out[t, row + 2] = a2
    out[t, row + 3] = a3


@njit(cache=True, fastmath=FAST_MATH)
def _four_outputs_two_rows(x, t, w, row, out):  # pragma: no cover - compiled
    """_four_outputs for rows t and t + 1 of x at once: each weight loads and widens once for both.
    Each row keeps its own four sums, which run exactly as in _four_outputs (see matmul_into)."""
    a0 = np.float32(0.0)
    a1 = np.float32(0.0)
    a2 = np.float32(0.0)
    a3 = np.float32(0.0)
    b0 = np.float32(0.0)
    b1 = np.float32(0.0)
    b2 = np.float32(0.0)
    b3 = np.float32(0.0)
    for i in range(x.shape[1]):
        xi = x[t, i]
        yi = x[t + 1, i]
        w0 = widen(w[row, i])
        w1 = widen(w[row + 1, i])
        w2 = widen(w[row + 2, i])
        w3 = widen(w[row + 3, i])
        a0 += w0 * xi
        a1 += w1 * xi
        a2 += w2 * xi
        a3 += w3 * xi
        b0 += w0 * yi
        b1 += w1 * yi
        b2 += w2 * yi
        b3 += w3 * yi
    out[t, row] = a0
    out[t, row + 1] = a1
    out[t, row + 2] = a2
    out[t, row + 3] = a3
    out[t + 1, row] = b0
    out[t + 1, row + 1] = b1
    out[t + 1, row + 2] = b2
    out[t + 1, row + 3] = b3


@njit(cache=True, fastmath=FAST_MATH)
def matmul_into(x, w, out):  # pragma: no cover - compiled
    """out (T, m) = x (T, n) @ w (m, n).T, w float32 or BF16 bits, on the calling thread.

    Weight rows go four at a time, so that four independent sums hide each other's latency, and
    input rows two at a time, so that verifying a draft reads each weight once for two rows. For a
    4096 x 256 BF16 matrix, 2 rows cost 1.3x one row this way, against 1.8x when each row read
    the weights by itself (timed on one core of a 2-core Intel Xeon). tools/bench_speculative.py
    shows what that does to MTP.

    A row's result does not depend on the rows beside it, bit for bit: a pair's sums run in the
    same order as a single row's, because the loop vectoriser splits every sum into the same
    lanes. That holds because minillm.kernels fixes the vectoriser's unroll count (see there).
    Verifying drafts thus gives the logits of decoding one token at a time, and speculative greedy
    output equals plain greedy output (tests/test_kernels.py and tests/test_numba_forward.py check
    both). Splitting the rows over threads made decoding slower on a 2-core machine (1,160 against
    1,363 tokens/s with only the LM head split): at this model size, waking a thread costs about
    as much as the matrix."""
    rows, n = x.shape
    m = w.shape[0]
    full = m - m % 4
    for o in range(0, full, 4):
        for t in range(0, rows - 1, 2):
            _four_outputs_two_rows(x, t, w, o, out)
        if rows % 2:
            _four_outputs(x, rows - 1, w, o, out)
    for o in range(full, m):
        for t in range(rows):
            acc = np.float32(0.0)
            for i in range(n):
                acc += widen(w[o, i]) * x[t, i]
            out[t, o] = acc


def linear_rows(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x (T, n) float32 @ w.T for a PyTorch-layout weight w (m, n), float32 or BF16 bits (uint16)."""
    if (x.dtype != np.float32 or w.dtype not in (np.float32, np.uint16) or x.ndim != 2 or w.ndim != 2
            or x.shape[1] != w.shape[1]):
        raise ValueError(f"linear_rows needs float32 (T, n) and float32 or uint16 (m, n), got {x.dtype}{x.shape}, "
                         f"{w.dtype}{w.shape}")
    out = np.empty((x.shape[0], w.shape[0]), dtype=np.float32)
    matmul_into(np.ascontiguousarray(x), np.ascontiguousarray(w), out)
    return out


def linear_rows_reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Compute x @ w.T with NumPy: the reference twin of linear_rows."""
    return x @ (bf16_to_f32(w) if w.dtype == np.uint16 else w).T
