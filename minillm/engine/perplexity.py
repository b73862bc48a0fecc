"""Perplexity of a model on text: mean next-token cross-entropy over fixed windows.

Each text is tokenized whole (without BOS) and cut into consecutive windows of `context - 1`
tokens. Each window is scored on its own with BOS in front (when the tokenizer has one), as the
training tool's validation does, so every token of the text is predicted exactly once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from minillm.errors import GenerationError


@dataclass
class PerplexityResult:
    tokens: int
    total_loss: float

    @property
    def mean_loss(self) -> float:
        return self.total_loss / self.tokens if self.tokens else float("nan")

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_loss) if self.tokens else float("nan")

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "mean_loss": self.mean_loss, "perplexity": self.perplexity}


def default_context(config) -> int:
    """Return the trained context length for YaRN models, else max_position_embeddings capped at 1024."""
    if config.rope.rope_type == "yarn" and config.rope.original_max_position_embeddings:
        return config.rope.original_max_position_embeddings
    return min(config.max_position_embeddings, 1024)


def window_loss(logits: np.ndarray, targets: np.ndarray) -> float:
    """Summed cross-entropy of targets (T,) under logits (T, V), in float64 for the log-sum-exp."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=-1))
    return float(np.sum(log_norm - shifted[np.arange(targets.size), targets]))


def text_windows(tokenizer, texts: list[str], context: int):
    """Yield the scored windows (at most `context` ids each, BOS first when there is one)."""
    bos = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    step = context - len(bos)
    for text in texts:
        ids = tokenizer.encode(text, add_bos=False)
        for start in range(0, len(ids), step):
            window = np.asarray(bos + ids[start : start + step], dtype=np.int64)
            if window.size >= 2:
                yield window


def perplexity(model, texts: list[str], context: int | None = None) -> PerplexityResult:
    context = context or default_context(model.config)
    if context < 2 or context > model.config.max_position_embeddings:
        raise GenerationError(f"invalid context {context}: use 2..{model.config.max_position_embeddings} tokens")
    result = PerplexityResult(0, 0.0)
    for windows in text_windows(model.tokenizer, texts, context):
        logits = model.logits(windows)
        result.total_loss += window_loss(logits[:-1], windows[1:])
        result.tokens += windows.size - 1
    if result.tokens == 0:
        raise GenerationError("the text files hold fewer than two tokens: nothing to score")
    return result
