"""Multi-head Latent Attention (DeepSeek-V2 paper, section 2.1), in two equal forms.

Shape legend: T new tokens, S key positions (cached + new), H heads, D model width,
C kv_lora_rank (latent), R qk_rope_head_dim, N qk_nope_head_dim, V v_head_dim.

Per token the cache holds only [c ; k_rope] (C + R values): the RMS-normed latent and the
rotated RoPE key shared by all heads.
- naive: expand every cached latent to per-head keys and values with kv_b_proj, then attend.
  Used for prefill, where T is large and the expansion is shared by many queries.
- absorbed: fold W_UK into the query and W_UV into the output, so attention runs directly over
  the latent cache as one 576-wide key head in DeepSeek-V3. Used for decode (T = 1).
Both compute the same function; tests/test_mla.py proves it on random inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minillm.config import ModelConfig
from minillm.model.norm import linear, rms_norm
from minillm.model.rope import Rotary

# The query and KV latent norms use a fixed eps in DeepSeek's reference (RMSNorm's default) and in
# transformers' DeepseekV2/V3 (v5), whatever rms_norm_eps is.
LATENT_NORM_EPS = 1e-6


@dataclass
class AttentionWeights:
    """One layer's MLA projections, float32, PyTorch (out, in) layout."""

    kv_a: np.ndarray  # (C + R, D)  kv_a_proj_with_mqa
    kv_a_norm: np.ndarray  # (C,)
    kv_b: np.ndarray  # (H * (N + V), C)
    o: np.ndarray  # (D, H * V)
    q_a: np.ndarray | None = None  # (Q, D), with q_lora_rank Q
    q_a_norm: np.ndarray | None = None  # (Q,)
    q_b: np.ndarray | None = None  # (H * (N + R), Q)
    q: np.ndarray | None = None  # (H * (N + R), D), only when q_lora_rank is null

    def split_kv_b(self, heads: int, nope: int, v_dim: int) -> tuple[np.ndarray, np.ndarray]:
        """W_UK (H, N, C) and W_UV (H, V, C): each head's block of kv_b_proj rows is [W_UK; W_UV]."""
        per_head = self.kv_b.reshape(heads, nope + v_dim, -1)
        return per_head[:, :nope, :], per_head[:, nope:, :]


class MLA:
    """Attention for one layer. `forward` appends the new tokens' latents to `cache` (when given)
    and attends over all cached positions."""

    def __init__(self, config: ModelConfig, weights: AttentionWeights, rotary: Rotary):
        self.config = config
        self.w = weights
        self.rotary = rotary
        self.heads = config.num_attention_heads
        self.scale = config.softmax_scale
        self.w_uk, self.w_uv = weights.split_kv_b(self.heads, config.qk_nope_head_dim, config.v_head_dim)
        # Tracing (minillm/engine/trace.py): while `trace` is true, each forward call stores references
        # to its cache entries (T, C + R) and its attention entropy (T,). Nothing is copied.
        self.trace = False
        self.last_entries: np.ndarray | None = None
        self.last_entropy: np.ndarray | None = None

    def project(self, x: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x (T, D) -> q_nope (T, H, N), rotated q_rope (T, H, R), cache entries (T, C + R)."""
        cfg, w = self.config, self.w
        if w.q is not None:
            q = linear(x, w.q)
        else:
            q = linear(rms_norm(linear(x, w.q_a), w.q_a_norm, LATENT_NORM_EPS), w.q_b)
        q = q.reshape(x.shape[0], self.heads, cfg.qk_head_dim)  # (T, H, N + R)
        q_nope = q[..., : cfg.qk_nope_head_dim]
        q_rope = self.rotary.apply(q[..., cfg.qk_nope_head_dim :], positions)

        kv = linear(x, w.kv_a)  # (T, C + R)
        latent = rms_norm(kv[:, : cfg.kv_lora_rank], w.kv_a_norm, LATENT_NORM_EPS)
        k_rope = self.rotary.apply(kv[:, cfg.kv_lora_rank :], positions)
        return q_nope, q_rope, np.concatenate([latent, k_rope], axis=-1)

    def attend_naive(self, q_nope, q_rope, blocks, positions) -> np.ndarray:
        """Expand the latents to per-head K and V, then attend. Returns (T, H * V)."""
        C = self.config.kv_lora_rank
        scores, values = [], []
        for keys, _ in blocks:
            latent, k_rope = keys[:, :C], keys[:, C:]
            k_nope = np.einsum("sc,hnc->hsn", latent, self.w_uk)  # (H, S, N)
            values.append(np.einsum("sc,hvc->hsv", latent, self.w_uv))  # (H, S, V)
            block_scores = np.einsum("thn,hsn->hts", q_nope, k_nope)  # (H, T, S)
            block_scores += np.einsum("thr,sr->hts", q_rope, k_rope)
            scores.append(block_scores)
        probs = self._softmax(scores, blocks, positions)
        out = sum(np.einsum("hts,hsv->thv", p, v) for p, v in zip(probs, values))  # (T, H, V)
        return linear(out.reshape(out.shape[0], -1), self.w.o)

    def attend_absorbed(self, q_nope, q_rope, blocks, positions) -> np.ndarray:
        """Attend over the latents directly. Returns (T, H * V)."""
        C = self.config.kv_lora_rank
        q_latent = np.einsum("thn,hnc->thc", q_nope, self.w_uk)  # (T, H, C): W_UK absorbed
        scores = []
        for keys, _ in blocks:
            block_scores = np.einsum("thc,sc->hts", q_latent, keys[:, :C])  # (H, T, S)
            block_scores += np.einsum("thr,sr->hts", q_rope, keys[:, C:])
            scores.append(block_scores)
        probs = self._softmax(scores, blocks, positions)
        mixed = sum(np.einsum("hts,sc->thc", p, keys[:, :C]) for p, (keys, _) in zip(probs, blocks))  # (T, H, C)
        out = np.einsum("thc,hvc->thv", mixed, self.w_uv)  # (T, H, V): W_UV absorbed
        return linear(out.reshape(out.shape[0], -1), self.w.o)

    def _softmax(self, scores: list[np.ndarray], blocks, positions: np.ndarray) -> list[np.ndarray]:
        """Scaled, causally masked softmax over the keys of all blocks together: a query at position
        p attends to keys at positions 0..p. Returns one probability array per block."""
        for block_scores, (keys, key_positions) in zip(scores, blocks):
            if key_positions is None:
                key_positions = np.arange(keys.shape[0])
            block_scores *= self.scale
            future = key_positions[None, :] > positions[:, None]  # (T, S)
            block_scores[:, future] = -np.inf
        joined = scores[0] if len(scores) == 1 else np.concatenate(scores, axis=-1)
        joined -= joined.max(axis=-1, keepdims=True)  # max-subtraction keeps exp finite
        np.exp(joined, out=joined)
        joined /= joined.sum(axis=-1, keepdims=True)
        if self.trace:
            self.last_entropy = attention_entropy(joined)
        if len(scores) == 1:
            return [joined]
        return np.split(joined, np.cumsum([s.shape[-1] for s in scores])[:-1], axis=-1)

    def forward(self, x: np.ndarray, positions: np.ndarray, cache=None, absorbed: bool = False) -> np.ndarray:
        """x (T, D) at `positions` (T,) -> (T, D).

        Without a cache the T tokens attend to each other only (positions must then start at 0).
        With a cache, `cache.append(entries)` stores the new entries and returns every cached key
        as blocks [(entries (S_i, C + R), positions (S_i,) or None for 0..S_i-1)].
        """
        q_nope, q_rope, entries = self.project(x, positions)
        if self.trace:
            self.last_entries = entries
        blocks = [(entries, None)] if cache is None else cache.append(entries)
        attend = self.attend_absorbed if absorbed else self.attend_naive
        return attend(q_nope, q_rope, blocks, positions)


def attention_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy in nats of each query's attention distribution, averaged over heads: probs
    (H, T, S) -> (T,). Masked keys have probability 0 and add nothing."""
    logs = np.log(np.where(probs > 0, probs, 1.0))
    return -(probs * logs).sum(axis=-1).mean(axis=0)
