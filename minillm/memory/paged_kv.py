"""Paged latent KV cache spread over the hbm, dram and ssd tiers.

A page holds `page_tokens` consecutive positions for every layer: (layers, P, C + R) float32.
Each page lives in exactly one tier:
- hbm: a slot of the hot arena, which attention reads in place;
- dram: a NumPy array of its own;
- ssd: a slot of the memory-mapped spill file.

Placement policy: a new page always starts in hbm. When hbm has no free slot, the oldest page
is demoted, except the attention sink (page 0, kept while hbm has two slots or more) and the
pages being written; recent pages therefore stay hot. A demoted page goes to dram, and when
dram is full the oldest dram page moves on to ssd first. Pages are never promoted back:
decoding reads every page at every step, so promotion would only swap pages around. Instead,
attention reads the pages outside hbm through a staging copy, one layer at a time, and a
background thread stages the next layer while the current one computes (the idea behind
DeepSeek's Dual Path loading). Every copy between tiers is counted.

Shape legend: L layers, P tokens per page, W = C + R latent values per token, S keys.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from minillm.errors import MemoryConfigError
from minillm.memory.sizes import format_size
from minillm.memory.spill import SpillFile
from minillm.memory.tiers import MemoryHierarchy

log = logging.getLogger(__name__)
EMPTY = np.iinfo(np.int64).max  # position of an unused row: masked as the far future


class PagedKVCache:
    def __init__(self, memory: MemoryHierarchy, layers: int, width: int, hot_slots: int,
                 spill_factory: Callable[[], SpillFile] | None):
        self.memory = memory
        self.P = memory.config.page_tokens
        self.layers, self.width = layers, width
        self.page_bytes = layers * self.P * width * 4
        if hot_slots < 1:
            raise MemoryConfigError(
                f"the hbm budget leaves room for no KV page ({format_size(self.page_bytes)} for "
                f"{self.P} tokens x {layers} layers): raise --hbm or lower --page-tokens")
        self.hot_slots = hot_slots
        self._spill_factory = spill_factory  # None: no ssd tier
        self.spill: SpillFile | None = None
        self.hot = np.zeros((layers, 0, width), dtype=np.float32)  # (L, slots * P, W), grown on demand
        self.hot_positions = np.zeros(0, dtype=np.int64)
        self.free_slots: list[int] = []
        self.tier: list[str] = []  # per page
        self.where: list = []  # per page: hot slot, dram array (L, P, W) or spill slot
        self.lengths = [0] * layers
        self.version = 0  # bumped whenever staged copies may have gone stale
        self._lock = threading.RLock()
        self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="kv-prefetch") if memory.config.prefetch else None
        self._staged: dict[int, tuple[int, Future]] = {}

    # --- placement ---

    def _hot_slot(self) -> int | None:
        if self.free_slots:
            return self.free_slots.pop()
        grown = self.hot.shape[1] // self.P
        if grown < self.hot_slots:
            new = min(self.hot_slots, max(1, 2 * grown))
            hot = np.zeros((self.layers, new * self.P, self.width), dtype=np.float32)
            hot[:, : self.hot.shape[1]] = self.hot
            positions = np.full(new * self.P, EMPTY, dtype=np.int64)
            positions[: self.hot_positions.size] = self.hot_positions
            self.hot, self.hot_positions = hot, positions
            self.free_slots.extend(range(new - 1, grown, -1))
            return grown
        return None

    def _victim(self, tier: str, protect_from: int) -> int | None:
        """Oldest page in `tier` below page `protect_from`, sparing the sink page while hbm has room."""
        keep_sink = tier == "hbm" and self.hot_slots >= 2
        for page, page_tier in enumerate(self.tier[:protect_from]):
            if page_tier == tier and not (keep_sink and page == 0):
                return page
        return None

    def _page_data(self, page: int) -> np.ndarray:
        """Return the page's values (L, P, W) wherever it lives: a view for dram and ssd, a copy for hbm."""
        tier, where = self.tier[page], self.where[page]
        if tier == "hbm":
            return self.hot[:, where * self.P : (where + 1) * self.P].copy()
        return where if tier == "dram" else self.spill.map[where]

    def _place_low(self, data: np.ndarray, source: str) -> tuple[str, object]:
        """Store a page in dram, or in ssd when dram is full, counting the copy from `source`."""
        tiers = self.memory.tiers
        if tiers["dram"].free_bytes < self.page_bytes:
            victim = self._victim("dram", len(self.tier))
            if victim is not None and self._ssd_has_room():
                self._move(victim, "ssd")
        if tiers["dram"].free_bytes >= self.page_bytes:
            self.memory.move(source, "dram", self.page_bytes)
            return "dram", np.array(data, dtype=np.float32)
        if self._ssd_has_room():
            slot = self._spill().allocate()
            self.spill.map[slot] = data
            self.memory.move(source, "ssd", self.page_bytes)
            return "ssd", slot
        raise MemoryConfigError(
            f"the KV cache ({len(self.tier)} pages of {format_size(self.page_bytes)}) no longer fits the tier "
            f"budgets: raise --dram or --ssd{'' if self._spill_factory else ' (the ssd tier is off: check --cache-dir)'}")

    def _ssd_has_room(self) -> bool:
        return self._spill_factory is not None and self.memory.tiers["ssd"].free_bytes >= self.page_bytes

    def _spill(self) -> SpillFile:
        """Return the ssd tier's spill file, creating it on first use."""
        if self.spill is None:
            self.spill = self._spill_factory()
        return self.spill

    def _assign(self, page: int, tier: str, where) -> None:
        """Record the page's new home and account its bytes there."""
        if page == len(self.tier):
            self.tier.append(tier)
            self.where.append(where)
        else:
            self.tier[page], self.where[page] = tier, where
        self.memory.reserve(tier, "kv", self.page_bytes)
        self.memory.pages[tier] += 1

    def _release(self, page: int) -> None:
        """Free the page's current home and its accounting (the page record stays)."""
        tier, where = self.tier[page], self.where[page]
        if tier == "hbm":
            self.hot_positions[where * self.P : (where + 1) * self.P] = EMPTY
            self.free_slots.append(where)
        elif tier == "ssd":
            self.spill.release(where)
        self.memory.reserve(tier, "kv", -self.page_bytes)
        self.memory.pages[tier] -= 1

    def _move(self, page: int, target: str) -> None:
        """Demote a page to `target`: ssd, or dram (which may pass it on to ssd when full)."""
        data = self._page_data(page)
        source = self.tier[page]
        if target == "ssd":
            slot = self._spill().allocate()
            self.spill.map[slot] = data
            self.memory.move(source, "ssd", self.page_bytes)
            new_home = ("ssd", slot)
        else:
            new_home = self._place_low(data, source)
        self._release(page)
        self._assign(page, *new_home)
        self.version += 1

    def _new_page(self, protect_from: int) -> None:
        page = len(self.tier)
        slot = self._hot_slot()
        if slot is None:
            victim = self._victim("hbm", protect_from)
            if victim is not None:
                slot = self.where[victim]
                self._move(victim, "dram")
                slot = self.free_slots.pop(self.free_slots.index(slot))
        if slot is None:
            self._assign(page, *self._place_low(np.zeros((self.layers, self.P, self.width), np.float32), "hbm"))
        else:
            self.hot_positions[slot * self.P : (slot + 1) * self.P] = np.arange(page * self.P, (page + 1) * self.P)
            self._assign(page, "hbm", slot)
        self.version += 1

    # --- the cache interface used by attention ---

    @property
    def length(self) -> int:
        return self.lengths[0]

    def write(self, layer: int, start: int, entries: np.ndarray) -> None:
        """Store entries (T, W) for positions start..start+T-1 of one layer."""
        with self._lock:
            end = start + entries.shape[0]
            first_new = start // self.P
            while len(self.tier) * self.P < end:
                self._new_page(protect_from=first_new)
            for page in range(start // self.P, (end - 1) // self.P + 1):
                lo, hi = max(start, page * self.P), min(end, (page + 1) * self.P)
                rows = entries[lo - start : hi - start]
                tier, where = self.tier[page], self.where[page]
                if tier == "hbm":
                    self.hot[layer, where * self.P + lo - page * self.P : where * self.P + hi - page * self.P] = rows
                    continue
                target = where if tier == "dram" else self.spill.map[where]
                target[layer, lo - page * self.P : hi - page * self.P] = rows
                self.memory.move("hbm", tier, rows.nbytes)
                self.version += 1

    def append(self, layer: int, entries: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Store the layer's new entries after its cached ones; return the key blocks to attend over:
        [(keys (S_i, W), positions (S_i,))], the hot arena first, then staged cold pages."""
        self.write(layer, self.lengths[layer], entries)
        self.lengths[layer] += entries.shape[0]
        return self.blocks(layer)

    def blocks(self, layer: int) -> list[tuple[np.ndarray, np.ndarray]]:
        blocks = [(self.hot[layer], self.hot_positions)]
        staged = self._take_staged(layer)
        if staged is not None:
            blocks.append(staged)
        if self._prefetcher is not None and self.layers > 1:
            self._stage_async((layer + 1) % self.layers)
        return blocks

    def _cold_pages(self) -> list[int]:
        return [page for page, tier in enumerate(self.tier) if tier != "hbm"]

    def _gather(self, layer: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Copy the layer's rows of every page outside hbm into one staging array (S, W)."""
        with self._lock:
            pages = self._cold_pages()
            if not pages:
                return None
            keys = np.empty((len(pages) * self.P, self.width), dtype=np.float32)
            for i, page in enumerate(pages):
                source = self.where[page] if self.tier[page] == "dram" else self.spill.map[self.where[page]]
                keys[i * self.P : (i + 1) * self.P] = source[layer]
                self.memory.move(self.tier[page], "hbm", self.P * self.width * 4)
            positions = (np.asarray(pages)[:, None] * self.P + np.arange(self.P)).reshape(-1)
            return keys, positions

    def _stage_async(self, layer: int) -> None:
        if layer not in self._staged and self._cold_pages():
            self._staged[layer] = (self.version, self._prefetcher.submit(self._gather, layer))

    def _take_staged(self, layer: int) -> tuple[np.ndarray, np.ndarray] | None:
        version, future = self._staged.pop(layer, (None, None))
        if future is not None and version == self.version:
            self.memory.count("prefetch_hits" if future.done() else "prefetch_stalls")
            return future.result()
        if future is not None:
            future.result()  # stale: pages moved or were written after staging began
        if not self._cold_pages():
            return None
        if self._prefetcher is not None:
            self.memory.count("prefetch_stalls")
        return self._gather(layer)

    def truncate(self, length: int) -> None:
        """Forget positions from `length` on, in every layer; pages past the end are freed."""
        with self._lock:
            if max(self.lengths) <= length:  # nothing to forget: keep the staged copies valid
                return
            self.lengths = [min(n, length) for n in self.lengths]
            keep = -(-max(self.lengths) // self.P)
            while len(self.tier) > keep:
                self._release(len(self.tier) - 1)
                self.tier.pop()
                self.where.pop()
            for layer, staged in list(self._staged.items()):  # staged copies may hold dropped rows
                self._staged[layer] = (-1, staged[1])
            self.version += 1

    def page_map(self) -> str:
        """Return one letter per page in position order: h (hbm), d (dram) or s (ssd)."""
        with self._lock:
            return "".join(tier[0] for tier in self.tier)

    def layer_view(self, layer: int) -> LayerView:
        return LayerView(self, layer)

    def page(self, page: int) -> np.ndarray:
        """Return a copy of one page's values (L, P, W), for the prefix cache."""
        with self._lock:
            return np.array(self._page_data(page))

    def load_page(self, data: np.ndarray) -> None:
        """Append a full page (L, P, W) read from the prefix cache on the ssd tier."""
        start = len(self.tier) * self.P
        for layer in range(self.layers):
            self.write(layer, start, data[layer])
        self.lengths = [start + self.P] * self.layers
        self.memory.move("ssd", "hbm", self.page_bytes)

    def close(self) -> None:
        """Release every page and delete the spill file."""
        if self._prefetcher is not None:
            self._prefetcher.shutdown(wait=True)
        with self._lock:
            for page in range(len(self.tier)):
                self._release(page)
            self.tier, self.where = [], []
            if self.spill is not None:
                self.spill.close()
                self.spill = None


class LayerView:
    """One layer's face of the paged cache, with the interface MLA expects."""

    def __init__(self, cache: PagedKVCache, layer: int):
        self.cache, self.layer = cache, layer

    @property
    def length(self) -> int:
        return self.cache.lengths[self.layer]

    def append(self, entries: np.ndarray):
        return self.cache.append(self.layer, entries)

    def truncate(self, length: int) -> None:
        self.cache.truncate(length)
