"""Multi-token prediction (DeepSeek-V3 paper, section 2.2): a module that drafts the token after next.

At position i the module reads the main model's final-normed hidden state h_i and the embedding of
the next token t_{i+1}, and predicts t_{i+2}:

    x = eh_proj([enorm(embed(t_{i+1})) ; hnorm(h_i)])      embedding first, as vLLM and SGLang
    y = decoder_block(x)                                   MLA + MoE, with its own latent cache
    logits = head(shared_head.norm(y))

To draft more than one token, the module is applied again with y as the hidden state and the
token it just drafted (the chaining vLLM uses for DeepSeek MTP).

Drafting scores only the lowest `draft_vocab` token ids (a quarter of the vocabulary by default),
the idea of FR-Spec (Zhao et al. 2025): a draft head restricted to frequent tokens. Byte-level
BPE numbers its tokens in merge order, and the earliest merges are the most frequent pairs, so
the lowest ids stand in for a frequency list. The head then reads a quarter of its weights.
Acceptance drops a little, because some drafts the full head gets right lie past the cut, but the
cheaper draft more than makes up for it: on the default model, 0.61 against 0.66 greedy
acceptance and 0.98x against 0.88x the plain speed (tools/bench_speculative.py runs both).
Output is unchanged: every draft is verified.
NOTE: the id order of other tokenizers, such as DeepSeek-V3's, has not been checked; a draft
vocabulary of the whole vocabulary (`draft_vocab=V`) gives the drafts of the full head.
Shape legend: T tokens, D model width, V vocabulary.
"""

from __future__ import annotations

import numpy as np

from minillm.config import ModelConfig
from minillm.errors import GenerationError
from minillm.model.mla import MLA
from minillm.model.norm import linear, rms_norm
from minillm.model.transformer import MTPWeights, Transformer


DRAFT_VOCAB_SHARE = 4  # the draft head scores 1 / DRAFT_VOCAB_SHARE of the vocabulary by default


class MTP:
    def __init__(self, config: ModelConfig, weights: MTPWeights, transformer: Transformer,
                 draft_vocab: int | None = None):
        V = config.vocab_size
        if draft_vocab is None:
            draft_vocab = max(1, V // DRAFT_VOCAB_SHARE)
        if not (isinstance(draft_vocab, int) and 1 <= draft_vocab <= V):
            raise GenerationError(f"invalid draft vocabulary {draft_vocab!r}: use 1 to {V} token ids")
        self.draft_vocab = draft_vocab  # drafts come from token ids below this
        self.config = config
        self.w = weights
        self.transformer = transformer
        self.attention = MLA(config, weights.block.attention, transformer.rotary)
        self.embed = weights.embed if weights.embed is not None else transformer.weights.embed
        self.head = weights.head if weights.head is not None else transformer.weights.lm_head
        self.layer_index = config.num_hidden_layers

    def forward(self, hidden: np.ndarray, next_ids: np.ndarray, positions: np.ndarray, cache=None,
                absorbed: bool = True, vocab: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """hidden (T, D) at positions (T,) and the following tokens (T,) -> (block output (T, D),
        logits (T, V) for the tokens two ahead). With `vocab`, only ids below it are scored and
        the others get -inf."""
        eps = self.config.rms_norm_eps
        embedded = rms_norm(self.embed[next_ids], self.w.embed_norm, eps)
        x = linear(np.concatenate([embedded, rms_norm(hidden, self.w.hidden_norm, eps)], axis=-1), self.w.eh_proj)
        y, _ = self.transformer.block(self.layer_index, self.w.block, self.attention, x, positions, cache, absorbed)
        normed = rms_norm(y, self.w.head_norm, eps)
        if vocab is None:
            return y, linear(normed, self.head)
        logits = np.full((y.shape[0], self.config.vocab_size), -np.inf, dtype=np.float32)
        logits[:, :vocab] = linear(normed, self.head[:vocab])
        return y, logits
