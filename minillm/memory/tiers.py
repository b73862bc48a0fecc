"""Tiers with byte budgets, and the counters that make every byte moved between them visible.

On a CPU machine hbm and dram are both RAM: the budgets decide where each page and expert is
allowed to live, and every move between tiers is an explicit copy that `move` counts.
- hbm: the working set the kernels compute on (pinned weights, resident experts, hot KV pages).
- dram: host memory (the memory-mapped checkpoint, warm KV pages).
- ssd: files under the cache directory (spilled KV pages, the persistent prefix cache).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from minillm.errors import MemoryConfigError
from minillm.memory.sizes import format_size, parse_size

TIER_NAMES = ("hbm", "dram", "ssd")
KINDS = ("kv", "experts", "engram", "weights")



def default_cache_dir() -> Path:
    """Return the cache directory: $MINILLM_CACHE_DIR, else ~/.cache/minillm."""
    return Path(os.environ.get("MINILLM_CACHE_DIR") or Path.home() / ".cache" / "minillm")

@dataclass
class MemoryConfig:
    """Budgets in bytes for each tier, the KV page size, and where the ssd tier keeps its files."""

    hbm: int = 512 * 1024**2
    dram: int = 2 * 1024**3
    ssd: int = 4 * 1024**3
    cache_dir: Path | None = None  # None: $MINILLM_CACHE_DIR, else ~/.cache/minillm
    page_tokens: int = 64
    hbm_kv: int | None = None  # hbm bytes for KV pages; None: what is left once experts take their share
    prefix_cache: bool = True
    prefetch: bool = True

    @classmethod
    def from_strings(cls, hbm=None, dram=None, ssd=None, hbm_kv=None, **kwargs) -> MemoryConfig:
        """Build from user text such as hbm="64MiB"; None keeps the default."""
        defaults = cls()
        sizes = {name: parse_size(value, f"--{name} budget") if value is not None else getattr(defaults, name)
                 for name, value in (("hbm", hbm), ("dram", dram), ("ssd", ssd))}
        if hbm_kv is not None:
            sizes["hbm_kv"] = parse_size(hbm_kv, "--hbm-kv budget")
        return cls(**sizes, **kwargs)

    def __post_init__(self) -> None:
        if not (isinstance(self.page_tokens, int) and self.page_tokens >= 1):
            raise MemoryConfigError(f"invalid page size {self.page_tokens!r}: use a positive number of tokens")
        for name in TIER_NAMES:
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 0):
                raise MemoryConfigError(f"invalid --{name} budget {value!r}: use a size like 64MiB")


@dataclass
class Tier:
    name: str
    capacity: int
    used: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    bytes_in: int = 0
    bytes_out: int = 0

    @property
    def used_bytes(self) -> int:
        return sum(self.used.values())

    @property
    def free_bytes(self) -> int:
        return self.capacity - self.used_bytes

    def snapshot(self) -> dict:
        return {"capacity_bytes": self.capacity, "used_bytes": self.used_bytes, "used_by_kind": dict(self.used),
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out}


class MemoryHierarchy:
    """The three tiers plus the event counters the statistics stream reports."""

    def __init__(self, config: MemoryConfig):
        self.config = config
        self.tiers = {name: Tier(name, getattr(config, name)) for name in TIER_NAMES}
        self.counters = dict.fromkeys(
            ("expert_hits", "expert_misses", "expert_bytes_streamed", "prefix_cache_hit_tokens",
             "prefix_cache_written_pages", "prefetch_hits", "prefetch_stalls",
             "engram_lookups", "engram_rows", "engram_bytes_read"), 0)
        self.pages = dict.fromkeys(TIER_NAMES, 0)
        self._lock = threading.Lock()

    def reserve(self, tier: str, kind: str, nbytes: int) -> None:
        """Account nbytes of `kind` as living in `tier` (negative to release)."""
        with self._lock:
            self.tiers[tier].used[kind] += nbytes

    def move(self, source: str, target: str, nbytes: int) -> None:
        """Count a copy of nbytes from one tier to another."""
        with self._lock:
            self.tiers[source].bytes_out += nbytes
            self.tiers[target].bytes_in += nbytes

    def count(self, counter: str, amount: int = 1) -> None:
        with self._lock:
            self.counters[counter] += amount

    def require(self, tier: str, kind: str, nbytes: int, what: str) -> None:
        """Reserve nbytes that must fit, or raise an error that names the budget to raise."""
        free = self.tiers[tier].free_bytes
        if nbytes > free:
            need = self.tiers[tier].used_bytes + nbytes
            raise MemoryConfigError(
                f"the {tier} budget ({format_size(self.tiers[tier].capacity)}) cannot hold {what} "
                f"({format_size(nbytes)}, {format_size(free)} free): raise --{tier} to at least {format_size(need)}"
            )
        self.reserve(tier, kind, nbytes)

    def snapshot(self) -> dict:
        """Plain-data view of every tier and counter, safe to serialise as JSON."""
        with self._lock:
            return {"tiers": {name: tier.snapshot() for name, tier in self.tiers.items()},
                    "pages": dict(self.pages), **self.counters}
