"""Multi-token prediction (DeepSeek-V3 paper, section 2.2): a module that drafts the token after next.

At position i the module reads the main model's final-normed hidden state h_i and the embedding of
the next token t_{i+1}, and predicts t_{i+2}:

    x = eh_proj([enorm(embed(t_{i+1})) ; hnorm(h_i)])      embedding first, as vLLM and SGLang
    y = decoder_block(x)                                   MLA + MoE, with its own latent cache
    logits = head(shared_head.norm(y))

To draft more than one token, the module is applied again with y as the hidden state and the
token it just drafted (the chaining vLLM uses for DeepSeek MTP).
Shape legend: T tokens, D model width, V vocabulary.
"""

from __future__ import annotations

import numpy as np

from minillm.config import ModelConfig
from minillm.model.mla import MLA
from minillm.model.norm import linear, rms_norm
from minillm.model.transformer import MTPWeights, Transformer


class MTP:
    def __init__(self, config: ModelConfig, weights: MTPWeights, transformer: Transformer):
        self.config = config
        self.w = weights
        self.transformer = transformer
        self.attention = MLA(config, weights.block.attention, transformer.rotary)
        self.embed = weights.embed if weights.embed is not None else transformer.weights.embed
        self.head = weights.head if weights.head is not None else transformer.weights.lm_head
        self.layer_index = config.num_hidden_layers

    def forward(self, hidden: np.ndarray, next_ids: np.ndarray, positions: np.ndarray, cache=None,
                absorbed: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """hidden (T, D) at positions (T,) and the following tokens (T,) -> (block output (T, D),
        logits (T, V) for the tokens two ahead)."""
        eps = self.config.rms_norm_eps
        embedded = rms_norm(self.embed[next_ids], self.w.embed_norm, eps)
        x = linear(np.concatenate([embedded, rms_norm(hidden, self.w.hidden_norm, eps)], axis=-1), self.w.eh_proj)
        y, _ = self.transformer.block(self.layer_index, self.w.block, self.attention, x, positions, cache, absorbed)
        logits = linear(rms_norm(y, self.w.head_norm, eps), self.head)
        return y, logits
