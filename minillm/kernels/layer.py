"""One decoder layer's attention half for a few rows, composed from the kernels, as two Numba calls.

`mla_project` runs from the residual stream to the query and the new cache entries. The caller
stores the entries in the paged cache, which hands back the key blocks. `mla_finish` attends,
projects, adds to the residual stream and applies the FFN's input norm. Splitting at the cache
keeps page placement (which tier, which slot) in Python, where the memory hierarchy counts it.
The NumPy path these replace is `Transformer.block` with `MLA.forward(absorbed=True)`;
tests/test_numba_forward.py proves the whole model equal on both.
"""

from __future__ import annotations

from numba import njit

from minillm.kernels.attention import absorbed_attention
from minillm.kernels.flags import FAST_MATH
from minillm.kernels.linear import matmul_into
from minillm.kernels.norm import rms_norm_into, rope_into


@njit(cache=True, fastmath=FAST_MATH)
def mla_project(h, input_norm, q_a, q_a_norm, q_b, kv_a, kv_a_norm, cos, sin, positions, eps, latent_eps,
                heads, nope, x, q_low, q, entries):  # pragma: no cover - compiled
    """h (T, D) -> x = norm(h), q (T, H * (N + R)) and entries (T, C + R), RoPE applied.

    Without a query LoRA (q_lora_rank null), q_a is the full query projection and q_b is empty."""
    rms_norm_into(h, input_norm, eps, x)
    if q_b.shape[0] == 0:
        matmul_into(x, q_a, q)
    else:
        matmul_into(x, q_a, q_low)
        rms_norm_into(q_low, q_a_norm, latent_eps, q_low)
        matmul_into(q_low, q_b, q)
    rope_into(q, heads, q.shape[1] // heads, nope, cos, sin, positions)
    matmul_into(x, kv_a, entries)
    C = kv_a_norm.shape[0]
    latent = entries[:, :C]
    rms_norm_into(latent, kv_a_norm, latent_eps, latent)
    rope_into(entries, 1, entries.shape[1], C, cos, sin, positions)


@njit(cache=True, fastmath=FAST_MATH)
def mla_finish(h, q, positions, w_uk, w_uv, o, keys_a, positions_a, keys_b, positions_b, scale, post_norm, eps,
               queries, mixed, peaks, totals, scores, attn, delta, x):  # pragma: no cover - compiled
    """Attend over the key blocks, h += o(attention), then x = post_norm(h) for the FFN."""
    absorbed_attention(q, positions, w_uk, w_uv, keys_a, positions_a, keys_b, positions_b, scale,
                       queries, mixed, peaks, totals, scores, attn)
    matmul_into(attn, o, delta)
    for t in range(h.shape[0]):
        for i in range(h.shape[1]):
            h[t, i] += delta[t, i]
    rms_norm_into(h, post_norm, eps, x)


@njit(cache=True, fastmath=FAST_MATH)
def final_logits(h, norm, eps, head, final, logits):  # pragma: no cover - compiled
    """final = norm(h) (T, D) and logits = final @ head.T (T, V)."""
    rms_norm_into(h, norm, eps, final)
    matmul_into(final, head, logits)


@njit(cache=True, fastmath=FAST_MATH)
def mtp_input(embedded, hidden, embed_norm, hidden_norm, eps, eh_proj, joined, h):  # pragma: no cover
    """h = eh_proj([embed_norm(embedded) ; hidden_norm(hidden)]), for the MTP module.

    hidden may be a view of h: both norms are taken before h is written."""
    D = embedded.shape[1]
    rms_norm_into(embedded, embed_norm, eps, joined[:, :D])
    rms_norm_into(hidden, hidden_norm, eps, joined[:, D:])
    matmul_into(joined, eh_proj, h)
