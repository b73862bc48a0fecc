"""Engram for the PyTorch training model: hashed n-gram embeddings, gated by the hidden state.

For token t the module hashes the last 2..N compressed token ids into K rows per order, gathers
those rows from one embedding table and concatenates them into e_t. Then::

    alpha_t = sigmoid(s(key_norm(W_k e_t + b_k) . query_norm(h_t) / sqrt(D)))   s(g) = sign(g) sqrt(|g|)
    v_t     = alpha_t * (W_v e_t + b_v)
    y_t     = v_t + silu(conv(conv_norm(v)))_t                      causal depthwise, dilation N

and the decoder layer adds y to the residual stream before attention. This is DeepSeek's Engram
demo with a single residual stream (no hyper-connections). The trainer and the engine share the
derivation of the hash parameters (minillm/model/engram_hash.py). The hashing itself is written
again here in torch, and tests/test_engram.py checks that both give the same indexes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minillm.model.engram import CONV_NORM_EPS, GATE_FLOOR
from minillm.model.engram_hash import multipliers, table_sizes


class Engram(nn.Module):
    def __init__(self, engram: dict, layer_id: int, hidden_size: int, vocab_size: int, norm_eps: float,
                 rms_norm: type[nn.Module]) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.max_ngram = engram["max_ngram_size"]
        self.heads = engram["n_head_per_ngram"]
        self.seed = engram["seed"]
        self.pad_id = engram["pad_id"]
        self.dilation = self.max_ngram
        self.kernel_size = engram["kernel_size"]
        row_width = engram["n_embed_per_ngram"] // self.heads
        sizes = table_sizes(engram["layer_ids"], self.max_ngram, self.heads, engram["engram_vocab_size"])[layer_id]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])

        # Derived from the tokenizer and the seed (set_vocabulary) and saved with the weights.
        self.register_buffer("compressed_ids", torch.arange(vocab_size, dtype=torch.int64))
        self.register_buffer("multipliers", torch.ones(self.max_ngram, dtype=torch.int64))
        self.register_buffer("table_sizes", torch.tensor(sizes, dtype=torch.int64))
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.int64), persistent=False)

        in_width = (self.max_ngram - 1) * engram["n_embed_per_ngram"]
        self.embedding = nn.Embedding(int(sum(sizes)), row_width)
        self.key_proj = nn.Linear(in_width, hidden_size)
        self.value_proj = nn.Linear(in_width, hidden_size)
        self.key_norm = rms_norm(hidden_size, norm_eps)
        self.query_norm = rms_norm(hidden_size, norm_eps)
        self.conv_norm = rms_norm(hidden_size, CONV_NORM_EPS)
        self.conv = nn.Conv1d(hidden_size, hidden_size, self.kernel_size, groups=hidden_size, bias=False,
                              dilation=self.dilation, padding=(self.kernel_size - 1) * self.dilation)

    def set_vocabulary(self, compressed_ids: np.ndarray) -> None:
        """Install the compressed-token map and the multipliers derived from it and the seed."""
        vocab = int(compressed_ids.max()) + 1
        self.compressed_ids.copy_(torch.from_numpy(np.asarray(compressed_ids, dtype=np.int64)))
        self.multipliers.copy_(torch.from_numpy(multipliers(self.seed, self.layer_id, self.max_ngram, vocab)))

    def hash(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Return rows [B, T, (N-1) * K], local to each head's table. Positions before 0 read the pad id."""
        x = self.compressed_ids[input_ids]
        pad = self.compressed_ids[self.pad_id]
        padded = F.pad(x, (self.max_ngram - 1, 0), value=int(pad))
        length = x.shape[1]
        shifted = [padded[:, self.max_ngram - 1 - k: self.max_ngram - 1 - k + length] for k in range(self.max_ngram)]
        mix = shifted[0] * self.multipliers[0]
        rows = []
        for k in range(1, self.max_ngram):
            mix = torch.bitwise_xor(mix, shifted[k] * self.multipliers[k])
            sizes = self.table_sizes[(k - 1) * self.heads: k * self.heads]
            rows.append(torch.remainder(mix[..., None], sizes))
        return torch.cat(rows, dim=-1)

    def forward(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        rows = self.hash(input_ids) + self.offsets
        embedded = self.embedding(rows).flatten(-2)  # [B, T, (N-1) * n_embed_per_ngram]
        score = (self.key_norm(self.key_proj(embedded)) * self.query_norm(hidden)).sum(-1, keepdim=True)
        score = score / math.sqrt(hidden.shape[-1])
        gate = torch.sigmoid(score.sign() * score.abs().clamp_min(GATE_FLOOR).sqrt())
        value = gate * self.value_proj(embedded)
        mixed = self.conv(self.conv_norm(value).transpose(1, 2))[..., : value.shape[1]]
        return value + F.silu(mixed).transpose(1, 2)
