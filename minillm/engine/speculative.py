"""Speculative decoding with the checkpoint's MTP module as the draft model.

One step, with k draft tokens and the pending token t_n (sampled, not yet run through the model):
1. draft: the MTP module proposes d_1..d_k (chained for k > 1);
2. verify: one main-model forward over [t_n, d_1, .., d_k] at positions n..n+k;
3. accept: the longest prefix of drafts the target agrees with, then one token of the target's
   own (a correction after a rejection, or a bonus token when every draft was accepted);
4. roll back: the main and MTP latent caches forget the positions of rejected drafts.

Greedy agreement is argmax equality, so the output equals plain greedy decoding. Sampling uses
the speculative sampling rule (Leviathan et al. 2023, Chen et al. 2023): accept d with
probability min(1, p(d) / q(d)), else draw from max(0, p - q) renormalised, which leaves the
output distribution equal to sampling from p alone.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from minillm.engine.kv_cache import LatentCache
from minillm.engine.sampler import Sampler

PREFILL_CHUNK_TOKENS = 256  # MTP positions per forward pass when it catches up with a prompt


def accept_draft(p: np.ndarray, q: np.ndarray, draft: int, rng: np.random.Generator) -> int | None:
    """Apply the speculative sampling rule to one draft token drawn from q, with target p (both (V,)).

    Returns None when the draft is accepted, else the replacement token drawn from max(0, p - q).
    """
    if rng.random() * q[draft] < p[draft]:  # accept with probability min(1, p/q)
        return None
    residual = np.maximum(p - q, 0.0)
    total = residual.sum()
    if total <= 0.0:  # p equals q up to round-off; any draw from p is then exact
        residual, total = p, p.sum()
    return int(rng.choice(residual.size, p=residual / total))


class SpeculativeDecoder:
    """Generates token ids after a prompt, k draft tokens per verification step."""

    def __init__(self, llm, mtp, sampler: Sampler, draft_tokens: int, stats, on_verify=None):
        self.llm = llm
        self.mtp = mtp
        self.forward = llm.forward  # the backend's decode and draft steps
        self.sampler = sampler
        self.k = draft_tokens
        self.stats = stats
        self.greedy = sampler.params.greedy
        # Tracing: on_verify(position, drafts, accepted, token, target_logits) after each verification,
        # where position is the pending token's and target_logits (k+1, V) the main model's.
        self.on_verify = on_verify

    def _draw(self, logits: np.ndarray) -> tuple[int, np.ndarray | None]:
        """Pick a token from logits (V,); also return its distribution when sampling."""
        if self.greedy:
            return int(np.argmax(logits)), None
        probs = self.sampler.distribution(logits, np.empty(logits.size))  # kept until verification
        return self.sampler.draw(probs), probs

    def _extend(self, hidden: np.ndarray, next_ids: np.ndarray, positions: np.ndarray,
                cache: LatentCache) -> tuple[np.ndarray, np.ndarray]:
        """Run the MTP module over new positions to fill its cache, and return its last call's output."""
        # a long prompt goes through in chunks on the naive path, as the main model's prefill does
        chunk = PREFILL_CHUNK_TOKENS
        tail = (positions.size - 1) // chunk * chunk  # start of the last chunk
        for lo in range(0, tail, chunk):
            self.forward.mtp(hidden[lo : lo + chunk], next_ids[lo : lo + chunk], positions[lo : lo + chunk], cache,
                             absorbed=False)
        return self.forward.mtp(hidden[tail:], next_ids[tail:], positions[tail:], cache,
                                absorbed=positions.size - tail <= 4)

    def _draft(self, hidden: np.ndarray, next_ids: np.ndarray, positions: np.ndarray, cache: LatentCache,
               count: int) -> tuple[list[int], list[np.ndarray | None]]:
        """Run the MTP module over the new positions, then chain it for `count` drafts."""
        y, logits = self._extend(hidden, next_ids, positions, cache)
        drafts, dists = [], []
        for j in range(count):
            token, dist = self._draw(logits[-1])
            drafts.append(token)
            dists.append(dist)
            if j + 1 < count:
                position = np.array([positions[-1] + j + 1])
                y, logits = self.forward.mtp(y[-1:], np.array([token]), position, cache)
        return drafts, dists

    def _verify(self, drafts: list[int], dists, target_logits: np.ndarray) -> tuple[int, int]:
        """Accepted draft count and the target's own next token, from logits (k+1, V)."""
        for j, draft in enumerate(drafts):
            if self.greedy:
                choice = int(np.argmax(target_logits[j]))
                if choice != draft:
                    return j, choice
                continue
            p = self.sampler.distribution(target_logits[j])
            replacement = accept_draft(p, dists[j], draft, self.sampler.rng)
            if replacement is not None:
                return j, replacement
        token, _ = self._draw(target_logits[len(drafts)])
        return len(drafts), token

    def run(self, ids: np.ndarray, prefill, caches: list, limit: int, engram=None) -> Iterator[int]:
        """Yield tokens after a prefilled prompt until the caller stops iterating or the context
        reaches `limit` positions.

        NOTE: on a prefix-cache hit the MTP module's own cache starts at the first recomputed
        position, so its drafts see less context and may be accepted less often. Output is
        unchanged: every draft is verified by the main model."""
        token, _ = self._draw(prefill.logits)
        mtp_cache = LatentCache(self.llm.config.latent_dim, capacity=ids.size - prefill.start + 64, start=prefill.start)
        # The MTP module reads the prompt as part of prefill, as the main model does: every position
        # whose next token is known. The last one waits for the token just drawn.
        known = ids.size - 1 - prefill.start
        if known > 0:
            self._extend(prefill.hidden[:known], ids[prefill.start + 1 :], np.arange(prefill.start, ids.size - 1),
                         mtp_cache)
        yield token

        mtp_hidden = prefill.hidden[known:]
        mtp_next = np.array([token])
        mtp_positions = np.array([ids.size - 1])
        while True:
            n = caches[0].length  # position of the pending token
            k = min(self.k, limit - n - 1)
            if k < 0:
                return
            drafts, dists = self._draft(mtp_hidden, mtp_next, mtp_positions, mtp_cache, k) if k else ([], [])

            # Engram's state is kept by position: rejected positions are overwritten later, no undo needed.
            hidden, target_logits = self.forward.decode([token] + drafts, n, caches, engram)
            accepted, token = self._verify(drafts, dists, target_logits)
            if self.on_verify is not None:
                self.on_verify(n, drafts, accepted, token, target_logits)
            self.stats.draft_tokens += k
            self.stats.accepted_tokens += accepted
            self.stats.verify_forwards += 1

            if accepted < k:  # forget the rejected drafts' rows
                for cache in caches:
                    cache.truncate(n + accepted + 1)
            mtp_cache.truncate(n)  # chained drafts wrote positions n.. with draft hidden states
            yield from drafts[:accepted]
            yield token

            mtp_hidden = hidden[: accepted + 1]
            mtp_next = np.array(drafts[:accepted] + [token])
            mtp_positions = np.arange(n, n + accepted + 1)
