"""Engram's hashed n-gram indexes: the compressed vocabulary, the table sizes, the multipliers.

Engram looks up one embedding row per (n-gram order, head) for every token. The row index
depends only on token ids, so it can be computed as soon as a token is known:

1. Compress the vocabulary: token ids whose text is the same after Unicode normalisation,
   accent stripping, lower-casing and whitespace folding share one compressed id.
2. For order n, mix the compressed ids of the last n tokens: ``(x_t * m_0) ^ (x_{t-1} * m_1) ^
   ...`` with int64 wrap-around products and odd multipliers ``m_k`` drawn from the seed.
3. Head j of order n reduces the mix modulo its own prime table size. All tables of a model get
   distinct primes, so two n-grams that collide in one head rarely collide in another.

Positions before the start of the sequence read as the compressed padding id. The checkpoint
stores the map, the multipliers and the sizes (see minillm/model/engram.py); the functions here
derive them and compute the indexes in NumPy.
Shape legend: T tokens, N max_ngram_size, K heads per order.
"""

from __future__ import annotations

import math

import numpy as np
from tokenizers import Regex, Tokenizer, normalizers

_INT64_MAX = np.iinfo(np.int64).max
_LAYER_SEED_STRIDE = 10007  # per-layer seed offset, as in DeepSeek's Engram demo
_SPACE_MARK = "\ue000"  # private-use character that keeps a lone space through Strip


def _text_normalizer() -> normalizers.Normalizer:
    return normalizers.Sequence([
        normalizers.NFKC(),
        normalizers.NFD(),
        normalizers.StripAccents(),
        normalizers.Lowercase(),
        normalizers.Replace(Regex(r"[ \t\r\n]+"), " "),
        normalizers.Replace(Regex(r"^ $"), _SPACE_MARK),
        normalizers.Strip(),
        normalizers.Replace(_SPACE_MARK, " "),
    ])


def compress_vocabulary(tokenizer: Tokenizer) -> np.ndarray:
    """Map every token id to a compressed id (int64, shape (V,)), numbered in order of first use.

    A token whose text alone is not valid UTF-8 (it decodes to U+FFFD) is keyed by its raw token
    string. Other tokens are keyed by their normalised text, or by the text itself when
    normalising leaves nothing.
    """
    normalizer = _text_normalizer()
    keys: dict[str, int] = {}
    table = np.empty(tokenizer.get_vocab_size(), dtype=np.int64)
    for token_id in range(table.size):
        text = tokenizer.decode([token_id], skip_special_tokens=False)
        if "\ufffd" in text:
            key = tokenizer.id_to_token(token_id)
        else:
            key = normalizer.normalize_str(text) or text
        table[token_id] = keys.setdefault(key, len(keys))
    return table


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    return all(n % d for d in range(3, math.isqrt(n) + 1, 2))


def table_sizes(layer_ids: list[int], max_ngram_size: int, heads: int, base_sizes: list[int]) -> dict[int, list[int]]:
    """Prime row counts per Engram layer: orders 2..N, K heads each, in that order.

    Head 0 of an order takes the first unused prime at or above that order's base size, each
    further head the next unused prime above its predecessor. "Unused" spans all layers, so
    every table of the model has its own prime.
    """
    used: set[int] = set()
    sizes: dict[int, list[int]] = {}
    for layer in layer_ids:
        sizes[layer] = []
        for order in range(2, max_ngram_size + 1):
            candidate = base_sizes[order - 2]
            for _ in range(heads):
                while not is_prime(candidate) or candidate in used:
                    candidate += 1
                used.add(candidate)
                sizes[layer].append(candidate)
                candidate += 1
    return sizes


def multipliers(seed: int, layer_id: int, max_ngram_size: int, compressed_vocab: int) -> np.ndarray:
    """Odd int64 multipliers (N,) for one layer, small enough that id * m fits in int64."""
    half = max(1, (_INT64_MAX // compressed_vocab) // 2)
    rng = np.random.default_rng(seed + _LAYER_SEED_STRIDE * layer_id)
    return rng.integers(0, half, size=max_ngram_size, dtype=np.int64) * 2 + 1


def ngram_indexes(context: np.ndarray, count: int, mults: np.ndarray, sizes: np.ndarray, heads: int) -> np.ndarray:
    """Table rows (count, (N-1) * K) for the last `count` tokens of `context`.

    context: compressed ids (N - 1 + count,), the count tokens preceded by the N - 1 tokens before
    them (padding ids where the sequence has not started). Rows are local to each head's table.
    """
    n_max = mults.size
    ctx = np.asarray(context, dtype=np.int64)
    if ctx.size != n_max - 1 + count:
        raise ValueError(f"context has {ctx.size} ids, expected {n_max - 1 + count}")
    end = ctx.size
    out = np.empty((count, (n_max - 1) * heads), dtype=np.int64)
    with np.errstate(over="ignore"):  # the products wrap around in int64 on purpose
        mix = ctx[end - count:] * mults[0]
        for k in range(1, n_max):
            mix = mix ^ (ctx[end - count - k: end - k] * mults[k])
            order_block = slice((k - 1) * heads, k * heads)
            out[:, order_block] = mix[:, None] % sizes[order_block][None, :]
    return out

