"""Routed experts streamed into the hbm tier on demand, under a byte budget with LRU eviction.

A miss copies the expert's three matrices out of the memory-mapped checkpoint (the dram tier),
converting them to float32. Attention, dense and shared-expert weights never pass through here:
they stay pinned in hbm.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from minillm.memory.tiers import MemoryHierarchy

Expert = tuple[np.ndarray, np.ndarray, np.ndarray]  # gate (F, D), up (F, D), down (D, F), float32


class StackedExperts:
    """All of one layer's experts resident as stacked arrays: the plain form, without a hierarchy."""

    def __init__(self, w_gate: np.ndarray, w_up: np.ndarray, w_down: np.ndarray):
        self.w_gate, self.w_up, self.w_down = w_gate, w_up, w_down  # (E, F, D), (E, F, D), (E, D, F)

    def get(self, expert: int) -> Expert:
        return self.w_gate[expert], self.w_up[expert], self.w_down[expert]


class ExpertCache:
    """LRU set of resident experts across all layers, keyed by (layer, expert)."""

    def __init__(self, memory: MemoryHierarchy, budget: int):
        self.memory = memory
        self.budget = budget
        self.resident: OrderedDict[tuple[int, int], Expert] = OrderedDict()
        self.used = 0

    def get(self, key: tuple[int, int], load: Callable[[], tuple[Expert, int]]) -> Expert:
        """The expert for key; `load` returns it and the bytes read from the checkpoint."""
        expert = self.resident.get(key)
        if expert is not None:
            self.resident.move_to_end(key)
            self.memory.count("expert_hits")
            return expert
        expert, stored_bytes = load()
        self.memory.count("expert_misses")
        self.memory.count("expert_bytes_streamed", stored_bytes)
        self.memory.move("dram", "hbm", stored_bytes)
        size = sum(m.nbytes for m in expert)
        while self.resident and self.used + size > self.budget:
            self._evict()
        if size <= self.budget:  # an expert larger than the whole budget is used once, not kept
            self.resident[key] = expert
            self.used += size
            self.memory.reserve("hbm", "experts", size)
        return expert

    def _evict(self) -> None:
        _, expert = self.resident.popitem(last=False)
        size = sum(m.nbytes for m in expert)
        self.used -= size
        self.memory.reserve("hbm", "experts", -size)

    def resize(self, budget: int) -> None:
        self.budget = budget
        while self.resident and self.used > budget:
            self._evict()

    def residency(self) -> list[tuple[int, int]]:
        """Resident (layer, expert) pairs, least recently used first."""
        return list(self.resident)


class StreamedExperts:
    """One layer's experts, fetched through an ExpertCache from a memory-mapped checkpoint."""

    def __init__(self, layer: int, cache: ExpertCache, load: Callable[[int], tuple[Expert, int]]):
        self.layer, self.cache, self.load = layer, cache, load

    def get(self, expert: int) -> Expert:
        return self.cache.get((self.layer, expert), lambda: self.load(expert))
