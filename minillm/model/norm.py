"""RMSNorm, linear projections and the SwiGLU feed-forward: the small building blocks of every layer."""

from __future__ import annotations

import numpy as np

from minillm.io.safetensors import bf16_to_f32


def linear(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x (T, in) @ w.T for a PyTorch-layout weight w (out, in), float32 or BF16 bits -> (T, out), float32."""
    if w.dtype == np.uint16:  # BF16 bits, as the numba backend keeps streamed experts
        w = bf16_to_f32(w)
    return x @ w.T


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * weight over the last axis, in float32."""
    variance = np.mean(x * x, axis=-1, keepdims=True)
    return (x / np.sqrt(variance + eps)) * weight


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def swiglu(x: np.ndarray, w_gate: np.ndarray, w_up: np.ndarray, w_down: np.ndarray) -> np.ndarray:
    """down(silu(gate(x)) * up(x)); weights are PyTorch-style (out, in). x (T, D) -> (T, D)."""
    return linear(silu(linear(x, w_gate)) * linear(x, w_up), w_down)
