"""Per-layer KV cache formulas: what one attention layer stores for a context of T tokens.

Every layer kind reduces to the same shape. A layer keeps `floor(T / compress_ratio)` cache
entries of `kv_values` values each (ratio 1 keeps one entry per token, ratio 0 keeps none),
plus an indexer key of `indexer_values` values per entry. It also keeps a sliding window of the
last `min(T, window)` tokens, `window_values` values each.

Sizes are counted in bits so that sub-byte formats (FP4, 6-bit) add up exactly. Scratch
buffers of constant size are not counted, because they do not grow with the context: for
example DeepSeek-V4's fp32 compressor state, which keeps the tokens of a window until it is full.
"""

from __future__ import annotations

from dataclasses import dataclass

# Layer kind ids, as they appear in reports and JSON output.
MHA = "mha"  # every query head has its own key and value
GQA = "gqa"  # query heads share num_key_value_heads keys and values
SLIDING = "sliding"  # keys and values of the last `window` tokens only
MLA = "mla"  # Multi-head Latent Attention: latent c plus the shared RoPE key per token
MLA_DSA = "mla_dsa"  # MLA plus a DeepSeek Sparse Attention indexer key per token
CSA = "csa"  # DeepSeek-V4 compressed sparse attention: pooled entries, indexer keys, window
HCA = "hca"  # DeepSeek-V4 heavily compressed attention: pooled entries and window


@dataclass(frozen=True, slots=True)
class LayerKind:
    """The cache layout of one attention layer; equal layouts are reported together."""

    kind: str
    description: str
    kv_values: int = 0  # values per cache entry, stored at the KV precision
    indexer_values: int = 0  # indexer key values per cache entry, stored at the indexer precision
    compress_ratio: int = 1  # tokens per cache entry; 0 means the layer keeps no such entries
    window: int = 0  # sliding-window length in tokens; 0 means no window
    window_values: int = 0  # values per window token, stored at the KV precision

    def entries(self, context_tokens: int) -> int:
        """Cache entries kept for `context_tokens` tokens; only complete groups are pooled."""
        if self.compress_ratio == 0:
            return 0
        return context_tokens // self.compress_ratio

    def window_tokens(self, context_tokens: int) -> int:
        return min(context_tokens, self.window)

    def cache_bits(self, context_tokens: int, kv_bits: int, indexer_bits: int) -> int:
        """Bits this layer caches for a context of `context_tokens` tokens."""
        entry_bits = self.kv_values * kv_bits + self.indexer_values * indexer_bits
        window_bits = self.window_values * kv_bits
        return self.entries(context_tokens) * entry_bits + self.window_tokens(context_tokens) * window_bits


def mha_layer(heads: int, key_head_dim: int, value_head_dim: int) -> LayerKind:
    """Build the layout of multi-head attention: a key and a value per head for every token."""
    return LayerKind(MHA, f"{heads} heads x (K {key_head_dim} + V {value_head_dim})",
                     kv_values=heads * (key_head_dim + value_head_dim))


def gqa_layer(kv_heads: int, key_head_dim: int, value_head_dim: int) -> LayerKind:
    """Build the layout of grouped-query attention: `kv_heads` keys and values per token."""
    return LayerKind(GQA, f"{kv_heads} KV heads x (K {key_head_dim} + V {value_head_dim})",
                     kv_values=kv_heads * (key_head_dim + value_head_dim))


def sliding_layer(window: int, values_per_token: int, token_layout: str) -> LayerKind:
    """Build the layout of a layer that attends to the last `window` tokens only.

    Its cache stops growing at `window` tokens. `token_layout` describes one token's values in reports.
    """
    return LayerKind(SLIDING, f"window of {window} tokens x {token_layout}", compress_ratio=0,
                     window=window, window_values=values_per_token)


def mla_layer(kv_lora_rank: int, rope_head_dim: int, index_head_dim: int = 0) -> LayerKind:
    """Build the layout of MLA: per token, the latent (kv_lora_rank values) and the shared RoPE key.

    With `index_head_dim` > 0 the layer also caches one DeepSeek Sparse Attention indexer key
    per token, as DeepSeek-V3.2 and GLM-5 do.
    """
    description = f"latent {kv_lora_rank} + RoPE key {rope_head_dim}"
    if index_head_dim:
        return LayerKind(MLA_DSA, f"{description}, indexer key {index_head_dim}",
                         kv_values=kv_lora_rank + rope_head_dim, indexer_values=index_head_dim)
    return LayerKind(MLA, description, kv_values=kv_lora_rank + rope_head_dim)


def csa_layer(compress_ratio: int, head_dim: int, index_head_dim: int, window: int) -> LayerKind:
    """Build the layout of DeepSeek-V4 CSA: per `compress_ratio` tokens, one pooled entry and one indexer key.

    The layer also keeps a window of recent tokens. K and V are the same vector in DeepSeek-V4, so an
    entry contains `head_dim` values, not a key and a value.
    """
    return LayerKind(
        CSA,
        f"1 entry of {head_dim} + indexer key {index_head_dim} per {compress_ratio} tokens, "
        f"window of {window} x {head_dim}",
        kv_values=head_dim, indexer_values=index_head_dim, compress_ratio=compress_ratio,
        window=window, window_values=head_dim,
    )


def hca_layer(compress_ratio: int, head_dim: int, window: int) -> LayerKind:
    """Build the layout of DeepSeek-V4 HCA: one pooled entry per `compress_ratio` tokens, plus a window."""
    return LayerKind(
        HCA,
        f"1 entry of {head_dim} per {compress_ratio} tokens, window of {window} x {head_dim}",
        kv_values=head_dim, compress_ratio=compress_ratio, window=window, window_values=head_dim,
    )
