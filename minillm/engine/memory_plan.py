"""Lays a loaded model out over the memory tiers and sizes each budget's share.

- dram holds the memory-mapped checkpoint (its file bytes, as stored); Engram tables count as
  "engram", the rest as "weights". Engram rows are read from there per token, never copied whole.
- hbm holds the pinned weights first (everything but the routed experts and Engram tables, as float32). Of what
  remains, KV pages get `hbm_kv` bytes when it is set and the expert cache the rest (at most what
  all experts need); otherwise the expert cache may use up to half and KV pages get the rest.
- ssd holds spilled KV pages and the persistent prefix cache, under the cache directory.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minillm.config import ModelConfig
from minillm.errors import MemoryConfigError
from minillm.memory.expert_cache import ExpertCache, StreamedExperts
from minillm.memory.paged_kv import PagedKVCache
from minillm.memory.prefix_cache import PrefixCache, model_fingerprint
from minillm.memory.sizes import format_size
from minillm.memory.spill import SpillFile
from minillm.memory.tiers import MemoryConfig, MemoryHierarchy, default_cache_dir
from minillm.model.engram import EngramTable
from minillm.model.transformer import ModelWeights

log = logging.getLogger(__name__)


def pinned_bytes(weights: ModelWeights) -> int:
    """float32 bytes of every weight that stays in hbm: all arrays except streamed experts and Engram tables."""
    seen, total = set(), 0
    stack = [weights]
    while stack:
        item = stack.pop()
        if isinstance(item, np.ndarray):
            if id(item) not in seen:
                seen.add(id(item))
                total += item.nbytes
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif hasattr(item, "__dict__") and not isinstance(item, (StreamedExperts, EngramTable)):
            stack.extend(vars(item).values())
    return total


def expert_bytes(config: ModelConfig) -> int:
    """float32 bytes of all routed experts of the main layers and MTP modules."""
    moe_layers = sum(config.is_moe_layer(i) for i in range(config.num_hidden_layers + config.num_nextn_predict_layers))
    return moe_layers * (config.n_routed_experts or 0) * 3 * config.moe_intermediate_size * config.hidden_size * 4


@dataclass
class MemoryPlan:
    memory: MemoryHierarchy
    hot_slots: int  # KV pages hbm may hold
    cache_dir: Path | None  # None when the directory cannot be written: no ssd tier
    prefix_cache: PrefixCache | None

    def new_kv_cache(self, layers: int, width: int) -> PagedKVCache:
        spill_factory = None
        if self.cache_dir is not None and self.memory.config.ssd > 0:
            shape = (layers, self.memory.config.page_tokens, width)
            spill_factory = lambda: SpillFile(self.cache_dir, shape)  # noqa: E731
        return PagedKVCache(self.memory, layers, width, self.hot_slots, spill_factory)


def plan_memory(config: MemoryConfig, model_config: ModelConfig, model_dir: Path, checkpoint_bytes: int,
                weights: ModelWeights, expert_cache: ExpertCache | None) -> MemoryPlan:
    memory = MemoryHierarchy(config)
    memory.require("dram", "weights", checkpoint_bytes, "the memory-mapped checkpoint")
    tables = sum(layer.engram.table.nbytes for layer in weights.layers if layer.engram is not None)
    memory.reserve("dram", "weights", -tables)  # the checkpoint's Engram tables count as their own kind
    memory.reserve("dram", "engram", tables)
    memory.require("hbm", "weights", pinned_bytes(weights), "the pinned weights (all but the routed experts)")

    remaining = memory.tiers["hbm"].free_bytes
    if config.hbm_kv is not None:
        expert_budget = max(0, min(expert_bytes(model_config), remaining - config.hbm_kv))
        remaining = min(remaining, config.hbm_kv + expert_budget)
    else:
        expert_budget = min(expert_bytes(model_config), remaining // 2)
    if expert_cache is not None:
        expert_cache.memory, expert_cache.resident, expert_cache.used = memory, type(expert_cache.resident)(), 0
        expert_cache.budget = expert_budget
    page_bytes = model_config.num_hidden_layers * config.page_tokens * model_config.latent_dim * 4
    hot_slots = (remaining - expert_budget) // page_bytes
    if hot_slots < 1:
        raise MemoryConfigError(
            f"the hbm budget ({format_size(config.hbm)}) leaves {format_size(remaining - expert_budget)} for KV "
            f"pages, less than one page ({format_size(page_bytes)}): raise --hbm to at least "
            f"{format_size(config.hbm - remaining + expert_budget + page_bytes)}")

    cache_dir = _usable_cache_dir(config.cache_dir or default_cache_dir()) if config.ssd > 0 else None
    prefix = None
    if cache_dir is not None and config.prefix_cache:
        prefix = PrefixCache(cache_dir, model_fingerprint(model_dir), config.page_tokens, config.ssd)
    log.info("memory plan: %d KV pages in hbm, experts %s, cache dir %s", hot_slots, format_size(expert_budget),
             cache_dir)
    return MemoryPlan(memory, hot_slots, cache_dir, prefix)


def _usable_cache_dir(path: Path) -> Path | None:
    """Return the directory if it can be created and written, else None (with one warning)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return path
    except OSError as exc:
        log.warning("cache directory %s is not writable (%s): running without the ssd tier and the "
                    "prefix cache; pass --cache-dir with a writable directory", path, exc.strerror or exc)
        return None
