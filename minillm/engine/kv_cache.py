"""The latent KV cache: per layer, kv_lora_rank + qk_rope_head_dim float32 values per token.

Shape legend: S cached positions, C kv_lora_rank, R qk_rope_head_dim.
"""

from __future__ import annotations

import numpy as np


class LatentCache:
    """One layer's cache, rows [c ; k_rope] (S, C + R), grown by doubling."""

    def __init__(self, width: int, capacity: int = 256, start: int = 0):
        self.data = np.zeros((capacity, width), dtype=np.float32)
        self.positions = np.arange(start, start + capacity)  # position of every row
        self.length = 0
        self.start = start  # position of row 0

    def append(self, entries: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Store entries (T, C + R) after the cached ones; return all of them as one key block
        [(entries (S, C + R), positions (S,))]."""
        end = self.length + entries.shape[0]
        if end > self.data.shape[0]:
            grown = np.zeros((max(end, 2 * self.data.shape[0]), self.data.shape[1]), dtype=np.float32)
            grown[: self.length] = self.data[: self.length]
            self.data = grown
            self.positions = np.arange(self.start, self.start + grown.shape[0])
        self.data[self.length : end] = entries
        self.length = end
        return [(self.data[:end], self.positions[:end])]

    @property
    def end(self) -> int:
        """Position after the last cached one."""
        return self.start + self.length

    def truncate(self, position: int) -> None:
        """Forget positions from `position` on (speculative decoding rolls back rejected drafts)."""
        self.length = max(0, min(self.length, position - self.start))

    @property
    def nbytes(self) -> int:
        return self.length * self.data.shape[1] * self.data.itemsize


def new_caches(num_layers: int, width: int, capacity: int = 256) -> list[LatentCache]:
    return [LatentCache(width, capacity) for _ in range(num_layers)]
