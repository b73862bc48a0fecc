"""LLM: a loaded checkpoint with its tokenizer, its memory plan, and the generation loop.

Prefill loads cached prefix pages, then runs the naive MLA path over the rest of the prompt in
page-aligned chunks, filling the paged latent cache. Each decode step runs the absorbed path over
the cache, for one token or, with MTP speculative decoding, for the pending token plus its drafts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from minillm.config import ModelConfig
from minillm.engine.forward import default_threads, make_forward
from minillm.engine.kv_cache import LatentCache, new_caches
from minillm.engine.memory_plan import plan_memory
from minillm.engine.sampler import Sampler, SamplingParams
from minillm.engine.speculative import SpeculativeDecoder
from minillm.errors import GenerationError, TokenizerError
from minillm.io.safetensors import Checkpoint
from minillm.io.tokenizer import Tokenizer
from minillm.io.weights import load_weights
from minillm.memory.expert_cache import ExpertCache
from minillm.memory.paged_kv import PagedKVCache
from minillm.memory.tiers import MemoryConfig, MemoryHierarchy
from minillm.model.engram import EngramState
from minillm.model.mtp import MTP
from minillm.model.transformer import Transformer

log = logging.getLogger(__name__)

PREFILL_CHUNK_TOKENS = 256  # prompt tokens per forward pass, rounded to whole KV pages


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    finish_reason: str = ""  # "eos", "length" (max_new_tokens) or "context" (max_position_embeddings)
    speculative: str = "none"  # "mtp" or "none"
    backend: str = ""  # "numba" or "numpy": what computed the decode steps
    draft_tokens: int = 0  # MTP drafts proposed
    accepted_tokens: int = 0  # MTP drafts the target model agreed with
    verify_forwards: int = 0  # main-model forward passes after prefill
    prefix_cache_hit_tokens: int = 0  # prompt tokens whose KV came from the prefix cache

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def tokens_per_forward(self) -> float:
        """Tokens produced per main-model forward pass after prefill (1.0 without drafts)."""
        return (self.generated_tokens - 1) / self.verify_forwards if self.verify_forwards else 0.0

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        # the first token comes out of prefill, so decode time covers the remaining ones
        steps = max(self.generated_tokens - 1, 0)
        return steps / self.decode_seconds if self.decode_seconds else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "prefill_tokens_per_second": self.prefill_tokens_per_second,
                "decode_tokens_per_second": self.decode_tokens_per_second,
                "time_to_first_token_seconds": self.prefill_seconds,
                "acceptance_rate": self.acceptance_rate, "tokens_per_forward": self.tokens_per_forward}


@dataclass
class Prefill:
    """What prefill leaves for decoding: hidden states of the positions it computed (the others
    came from the prefix cache), the first computed position, and the last position's logits."""

    hidden: np.ndarray  # (T, D)
    start: int
    logits: np.ndarray  # (V,)


class LLM:
    def __init__(self, config: ModelConfig, transformer: Transformer, tokenizer: Tokenizer | None, path: Path,
                 checkpoint: Checkpoint, expert_cache: ExpertCache, memory: MemoryConfig, backend: str = "numba",
                 threads: int | None = None, draft_vocab: int | None = None):
        self.config = config
        self.transformer = transformer
        self._tokenizer = tokenizer
        self.path = path
        self.checkpoint = checkpoint
        self.expert_cache = expert_cache
        self.last_stats = GenerationStats()
        self.last_snapshot: dict = {}
        mtp = transformer.weights.mtp
        self.mtp = MTP(config, mtp[0], transformer, draft_vocab) if mtp else None
        # decode and verification steps: Numba kernels or the NumPy reference (minillm/engine/forward.py)
        self.forward = make_forward(backend, transformer, self.mtp, threads)
        self.threads = threads or default_threads()  # BLAS threads for prefill; decode runs on one
        self.moe_layers = [i for i in range(config.num_hidden_layers) if config.is_moe_layer(i)]
        self.routing_counts = np.zeros((len(self.moe_layers), config.n_routed_experts or 0), dtype=np.int64)
        self._kv: PagedKVCache | None = None  # the running generation's cache, for snapshots
        transformer.observer = self._count_routing
        self.tracer = None  # a minillm.engine.trace.Tracer while attached; it receives each token and verification
        self.set_memory(memory)

    @classmethod
    def from_directory(cls, path: str | Path, memory: MemoryConfig | None = None, backend: str = "numba",
                       threads: int | None = None, draft_vocab: int | None = None) -> LLM:
        path = Path(path)
        memory = memory or MemoryConfig()
        config = ModelConfig.from_file(path)
        checkpoint = Checkpoint(path)  # stays open: routed experts stream from its memory map
        expert_cache = ExpertCache(MemoryHierarchy(memory), budget=0)  # sized by set_memory
        weights = load_weights(config, checkpoint, expert_cache)
        tokenizer = None
        if (path / "tokenizer.json").is_file():
            tokenizer = Tokenizer.from_directory(path, config.bos_token_id, config.eos_token_ids)
        log.info("loaded %s: %d layers, hidden %d, vocab %d", path, config.num_hidden_layers,
                 config.hidden_size, config.vocab_size)
        return cls(config, Transformer(config, weights), tokenizer, path, checkpoint, expert_cache, memory,
                   backend, threads, draft_vocab)

    def set_memory(self, memory: MemoryConfig) -> None:
        """Apply new tier budgets (between generations): counters restart and experts stream in again."""
        self.plan = plan_memory(memory, self.config, self.path, self.checkpoint.file_bytes,
                                self.transformer.weights, self.expert_cache)
        self.last_snapshot = self.plan.memory.snapshot()

    @property
    def memory(self) -> MemoryHierarchy:
        return self.plan.memory

    def close(self) -> None:
        self.checkpoint.close()

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            raise TokenizerError(f"{self.path} has no tokenizer.json: copy the model's tokenizer files there, or pass token ids")
        return self._tokenizer

    @property
    def eos_ids(self) -> tuple[int, ...]:
        return self._tokenizer.eos_ids if self._tokenizer is not None else self.config.eos_token_ids

    def _check_ids(self, ids: Sequence[int]) -> np.ndarray:
        array = np.asarray(ids, dtype=np.int64).reshape(-1)
        if array.size == 0:
            raise GenerationError("the prompt is empty: give at least one token")
        bad = array[(array < 0) | (array >= self.config.vocab_size)]
        if bad.size:
            raise GenerationError(f"token id {int(bad[0])} is outside the vocabulary (0..{self.config.vocab_size - 1})")
        if array.size > self.config.max_position_embeddings:
            raise GenerationError(f"the prompt has {array.size} tokens, more than the model's "
                                  f"max_position_embeddings ({self.config.max_position_embeddings}): shorten it")
        return array

    def _prompt_ids(self, prompt: str | Sequence[int]) -> np.ndarray:
        return self._check_ids(self.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits (T, V) float32 for a whole sequence, computed without a cache (naive MLA)."""
        array = self._check_ids(ids)
        hidden = self.transformer.hidden_states(array, np.arange(array.size))
        return self.transformer.logits(hidden)

    def new_caches(self, capacity: int = 256) -> list[LatentCache]:
        """Plain per-layer latent caches outside the memory hierarchy, for use with `step`."""
        return new_caches(self.config.num_hidden_layers, self.config.latent_dim, capacity)

    def new_engram_state(self, capacity: int = 256) -> EngramState | None:
        """Per-sequence Engram state to pass to `step` with the caches (None without Engram layers).
        Its table reads are counted in the memory hierarchy."""
        state = self.transformer.new_engram_state(capacity)
        if state is not None:
            state.on_gather = self._count_engram
        return state

    def _count_engram(self, lookups: int, rows: int, nbytes: int) -> None:
        self.memory.count("engram_lookups", lookups)
        self.memory.count("engram_rows", rows)
        self.memory.count("engram_bytes_read", nbytes)
        self.memory.move("dram", "hbm", nbytes)

    def step(self, ids: np.ndarray, caches, absorbed: bool, engram: EngramState | None = None) -> np.ndarray:
        """Run tokens ids (T,) after the cached ones; returns the last position's logits (V,).
        A model with Engram layers also needs the sequence's `new_engram_state()`."""
        start = caches[0].length
        positions = np.arange(start, start + ids.size)
        hidden = self.transformer.hidden_states(ids, positions, caches, absorbed, engram=engram)
        return self.transformer.logits(hidden[-1:])[0]

    def _page_shapes(self, kv: PagedKVCache) -> list[tuple[int, int, int]]:
        """Arrays of one prefix-cache page: the latent KV, then the Engram layers' state if any."""
        shapes = [(kv.layers, kv.P, kv.width)]
        if self.transformer.engram:
            shapes.append((len(self.transformer.engram), kv.P, self.config.hidden_size))
        return shapes

    def _prefill(self, ids: np.ndarray, kv: PagedKVCache, caches: list, engram: EngramState | None) -> Prefill:
        """Load cached prefix pages, compute the rest of the prompt in page-aligned chunks, and
        store the newly computed full pages in the prefix cache."""
        prefix = self.plan.prefix_cache
        page_tokens = kv.P
        hit_pages = 0
        if prefix is not None:
            for page in range(prefix.reusable_pages(ids)):
                arrays = prefix.read(ids, page, *self._page_shapes(kv))
                if arrays is None:
                    break
                kv.load_page(arrays[0])
                if engram is not None:
                    start = page * page_tokens
                    engram.load(start, ids[start : start + page_tokens], arrays[1])
                hit_pages += 1
            self.memory.count("prefix_cache_hit_tokens", hit_pages * page_tokens)

        start = hit_pages * page_tokens
        chunk = page_tokens * max(1, PREFILL_CHUNK_TOKENS // page_tokens)
        hidden = []
        for lo in range(start, ids.size, chunk):
            hi = min(ids.size, (lo // chunk + 1) * chunk)  # chunk edges at fixed positions
            hidden.append(self.transformer.hidden_states(ids[lo:hi], np.arange(lo, hi), caches, absorbed=False,
                                                         engram=engram))
        hidden = np.concatenate(hidden)

        if prefix is not None:
            try:
                for page in range(hit_pages, prefix.reusable_pages(ids)):
                    arrays = [kv.page(page)]
                    if engram is not None:
                        arrays.append(engram.page_rows(page * page_tokens, page_tokens))
                    prefix.write(ids, page, *arrays)
                    self.memory.count("prefix_cache_written_pages")
            except OSError as exc:
                log.warning("could not write the prefix cache under %s (%s): continuing without it",
                            prefix.directory, exc.strerror or exc)
        return Prefill(hidden, start, self.transformer.logits(hidden[-1:])[0])

    def snapshot(self) -> dict:
        """Statistics now: every tier's budget, use and traffic, plus this generation's counters.

        Keys: tiers, pages, the event counters of MemoryHierarchy, page_map (one letter per KV page:
        h, d or s), page_tokens, experts_resident ([layer, expert] pairs in hbm), routing (tokens
        routed to each expert in this generation, per MoE layer) and generation (GenerationStats)."""
        return {**self.memory.snapshot(),
                "page_map": self._kv.page_map() if self._kv is not None else "",
                "page_tokens": self.memory.config.page_tokens,
                "experts_resident": [list(key) for key in self.expert_cache.residency()],
                "routing": {"layers": self.moe_layers, "counts": self.routing_counts.tolist()},
                "generation": self.last_stats.to_dict()}

    def _count_routing(self, layer: int, output) -> None:
        if output.expert_indices is None:
            return
        counts = self.routing_counts[self.moe_layers.index(layer)]
        if output.expert_indices.shape[0] > 8:
            np.add.at(counts, output.expert_indices.reshape(-1), 1)
            return
        for expert in output.expert_indices.flat:  # a decode step: no temporary arrays
            counts[expert] += 1

    def resolve_speculative(self, speculative: str) -> str:
        """"auto" becomes "mtp" when the checkpoint stores an MTP module, else "none"."""
        if speculative not in ("auto", "mtp", "none"):
            raise GenerationError(f"invalid speculative mode {speculative!r}: use 'auto', 'mtp' or 'none'")
        if speculative == "auto":
            return "mtp" if self.mtp is not None else "none"
        if speculative == "mtp" and self.mtp is None:
            raise GenerationError(f"{self.path} stores no MTP module: use speculative 'none'")
        return speculative

    def _plain_tokens(self, prefill: Prefill, caches: list, engram: EngramState | None, limit: int, sampler: Sampler,
                      stats: GenerationStats) -> Iterator[int]:
        token = sampler(prefill.logits)
        yield token
        while caches[0].length < limit:
            _, logits = self.forward.decode([token], caches[0].length, caches, engram)
            token = sampler(logits[-1])
            stats.verify_forwards += 1
            yield token

    def generate_ids(self, prompt: str | Sequence[int], max_new_tokens: int = 128, temperature: float = 0.8,
                     top_k: int = 0, top_p: float = 1.0, seed: int | None = None, stop_at_eos: bool = True,
                     speculative: str = "auto", draft_tokens: int = 1,
                     on_snapshot: Callable[[dict], None] | None = None) -> Iterator[int]:
        """Yield new token ids one at a time. Statistics land in `last_stats` as it runs.

        speculative: "mtp" drafts `draft_tokens` tokens per step with the checkpoint's MTP module
        and verifies them in one forward pass; "none" decodes one token per forward; "auto" picks
        "mtp" when the checkpoint has MTP weights. Both give the same greedy output.
        on_snapshot: called with `snapshot()` after prefill and after every token.
        """
        if not (isinstance(max_new_tokens, int) and max_new_tokens >= 0):
            raise GenerationError(f"invalid max_new_tokens {max_new_tokens!r}: use 0 or a positive integer")
        if not (isinstance(draft_tokens, int) and draft_tokens >= 1):
            raise GenerationError(f"invalid draft_tokens {draft_tokens!r}: use a positive integer")
        mode = self.resolve_speculative(speculative)
        sampler = Sampler(SamplingParams(temperature, top_k, top_p, seed), kernels=self.forward.name == "numba")
        ids = self._prompt_ids(prompt)
        limit = self.config.max_position_embeddings
        stats = self.last_stats = GenerationStats(prompt_tokens=int(ids.size), finish_reason="context",
                                                  speculative=mode, backend=self.forward.name)
        if max_new_tokens == 0:
            stats.finish_reason = "length"
            return

        started = time.perf_counter()
        hits_before = self.memory.counters["prefix_cache_hit_tokens"]
        kv = self._kv = self.plan.new_kv_cache(self.config.num_hidden_layers, self.config.latent_dim)
        self.routing_counts[:] = 0
        decode_threads = None
        try:
            caches = [kv.layer_view(layer) for layer in range(self.config.num_hidden_layers)]
            engram = self.new_engram_state(ids.size + min(max_new_tokens, limit) + 8)
            with threadpool_limits(self.threads, user_api="blas"):
                prefill = self._prefill(ids, kv, caches, engram)
            # Decode multiplies matrices by one to a few rows, where OpenBLAS's threads cost more than
            # they save. Measured on a 2-core machine: 0.2 ms on one thread against 4 ms on two for a
            # 2-row head projection. So decode runs BLAS on one thread.
            decode_threads = threadpool_limits(1, user_api="blas")
            stats.prefix_cache_hit_tokens = self.memory.counters["prefix_cache_hit_tokens"] - hits_before
            if mode == "mtp":
                decoder = SpeculativeDecoder(self, self.mtp, sampler, draft_tokens, stats,
                                             on_verify=self.tracer.on_verify if self.tracer is not None else None)
                tokens = decoder.run(ids, prefill, caches, limit, engram)
            else:
                tokens = self._plain_tokens(prefill, caches, engram, limit, sampler, stats)

            for token in tokens:
                now = time.perf_counter()
                if stats.generated_tokens == 0:
                    stats.prefill_seconds, decode_started = now - started, now
                stats.generated_tokens += 1
                stats.decode_seconds = now - decode_started
                if self.tracer is not None:
                    self.tracer.on_token(token)
                if on_snapshot is not None:  # a snapshot costs about 0.1 ms: only build one for a listener
                    self.last_snapshot = self.snapshot()
                    on_snapshot(self.last_snapshot)
                yield token
                if stop_at_eos and token in self.eos_ids:
                    stats.finish_reason = "eos"
                    return
                if stats.generated_tokens >= max_new_tokens:
                    stats.finish_reason = "length"
                    return
        finally:
            if decode_threads is not None:
                decode_threads.restore_original_limits()
            self.last_snapshot = self.snapshot()  # before close(), which releases every page
            kv.close()
            self._kv = None

    def generate(self, prompt: str | Sequence[int], max_new_tokens: int = 128, temperature: float = 0.8,
                 top_k: int = 0, top_p: float = 1.0, seed: int | None = None, speculative: str = "auto",
                 draft_tokens: int = 1, on_snapshot: Callable[[dict], None] | None = None) -> Iterator[str]:
        """Yield generated text piece by piece; no piece ends inside a UTF-8 character.
        Arguments as for `generate_ids`."""
        stream = self.tokenizer.stream()
        for token in self.generate_ids(prompt, max_new_tokens, temperature, top_k, top_p, seed,
                                       speculative=speculative, draft_tokens=draft_tokens,
                                       on_snapshot=on_snapshot):
            if token in self.eos_ids:
                continue
            piece = stream.push(token)
            if piece:
                yield piece
