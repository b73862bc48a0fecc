"""Per-layer trace of a generation: what `minillm generate --trace N` writes.

The trace covers every main-model forward pass that produces one of the first N generated tokens.
For each pass it writes the shapes and then, per layer, the cache rows appended, the tier of each
KV page read (`PagedKVCache.page_map`) and the expert cache's hits and misses. Per shown position
it adds the hidden-state norm, the attention entropy, the norms of the cached latent and RoPE key,
and on MoE layers the routed experts with their weights plus the shared experts. Prefill shows only
the last prompt position, whose logits pick the first token, and decode passes show every position.
With MTP speculative decoding the trace also writes each draft and how the main model verified it.

While attached, the tracer sets `MLA.trace` on every main layer and chains its observer after the
one already on the transformer. The forward pass computes the same arrays either way, so the
generated tokens do not change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TextIO

import numpy as np

from minillm.memory.sizes import format_size
from minillm.model.transformer import LayerOutput

BYTES_PER_VALUE = 4  # the latent cache stores float32


@dataclass
class _LayerRecord:
    layer: int
    output: LayerOutput
    page_map: str
    expert_hits: int  # expert cache hits during this layer
    expert_misses: int
    streamed_bytes: int  # bytes copied from the checkpoint (dram) into hbm by those misses


@dataclass
class _Forward:
    """One main-model forward pass, buffered until the tokens it produced are known."""

    index: int
    prefill: bool
    layers: list[_LayerRecord] = field(default_factory=list)
    drafts: list[int] = field(default_factory=list)
    engram: dict[str, int] = field(default_factory=dict)  # Engram counter deltas: rows gathered before layer 0


class Tracer:
    """Writes the trace of the first `tokens` generated tokens of an LLM to `stream`.

    Use it around one generation: `start(prompt)`, iterate `llm.generate(...)`, then `stop()`.
    """

    def __init__(self, llm, stream: TextIO, tokens: int = 1):
        if tokens < 1:
            raise ValueError(f"invalid token count {tokens}: trace at least 1 token")
        self.llm = llm
        self.stream = stream
        self.tokens = tokens
        self._previous_observer = None
        self._sequence: list[int] = []  # prompt ids, then every generated token
        self._generated = 0
        self._forwards = 0
        self._forward: _Forward | None = None
        self._tracing = False  # whether the current forward pass is traced
        self._labels: list[str] = []  # how the next tokens were chosen, from the last verification
        self._counters = {}
        self._tokenizer = None  # set by start() for text prompts; token ids are then shown with their text

    # --- attaching ---

    def start(self, prompt: str | list[int]) -> None:
        """Attach the hooks and write the tokenizer step and the cache layout."""
        llm = self.llm
        self._tokenizer = llm.tokenizer if isinstance(prompt, str) else None
        ids = self._tokenizer.encode(prompt) if self._tokenizer is not None else [int(i) for i in prompt]
        self._sequence = list(ids)
        self._write_header(prompt, ids)
        for attention in llm.transformer.attention:
            attention.trace = True
        self._previous_observer = llm.transformer.observer
        llm.transformer.observer = self._observe
        llm.tracer = self
        self._counters = dict(llm.memory.counters)

    def stop(self) -> None:
        """Write what is still buffered and detach the hooks."""
        self._flush()
        llm = self.llm
        llm.transformer.observer = self._previous_observer
        llm.tracer = None
        for attention in llm.transformer.attention:
            attention.trace = False
            attention.last_entries = attention.last_entropy = None
        self.stream.flush()

    # --- hooks called by the engine ---

    def _observe(self, layer: int, output: LayerOutput) -> None:
        if self._previous_observer is not None:
            self._previous_observer(layer, output)
        if layer == 0:
            self._flush()
            self._tracing = self._generated < self.tokens
            if self._tracing:
                self._forwards += 1
                self._forward = _Forward(self._forwards, prefill=self._generated == 0)
        if not self._tracing or self._forward is None:
            return
        # NOTE: the deltas of layer 0 also count expert loads of the MTP draft that ran just before
        # this pass. The trace shows them only when layer 0 is an MoE layer (first_k_dense_replace = 0).
        counters = self.llm.memory.counters
        deltas = {name: counters[name] - self._counters.get(name, 0)
                  for name in ("expert_hits", "expert_misses", "expert_bytes_streamed",
                               "engram_lookups", "engram_rows", "engram_bytes_read")}
        self._counters = dict(counters)
        if layer == 0:
            self._forward.engram = {name: deltas[name] for name in ("engram_lookups", "engram_rows", "engram_bytes_read")}
        self._forward.layers.append(_LayerRecord(layer, output, self.llm.snapshot()["page_map"],
                                                 deltas["expert_hits"], deltas["expert_misses"],
                                                 deltas["expert_bytes_streamed"]))

    def on_verify(self, position: int, drafts: list[int], accepted: int, token: int,
                  target_logits: np.ndarray) -> None:
        """Called by SpeculativeDecoder after each verification (see its `on_verify`)."""
        if not self._tracing or self._forward is None:
            return
        self._forward.drafts = list(drafts)
        forward = self._forward
        self._flush()
        for j, draft in enumerate(drafts):
            logits = target_logits[j]
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            best = int(np.argmax(logits))
            verdict = "accepted" if j < accepted else "rejected"
            if j == 0:
                source = (f"the main model's hidden state at position {position - 1} and token "
                          f"{self._token(self._sequence_id(position, forward))}")
            else:
                source = f"the MTP module's own output at position {position + j - 1} and draft {self._token(drafts[j - 1])}"
            self._line(f"  mtp: draft for position {position + j + 1}: {self._token(draft)}, from {source}")
            self._line(f"       main model's prediction for position {position + j + 1} (row {position + j}): "
                       f"argmax {self._token(best)}, p(draft) at temperature 1 {probs[draft]:.3f} -> {verdict}")
            if j >= accepted:
                break
        self._labels = [f"accepted draft for position {position + j + 1}" for j in range(accepted)]
        kind = "bonus" if accepted == len(drafts) else "correction"
        self._labels.append(f"{kind}: main model logits at position {position + accepted}")
        self._line(f"  mtp: accepted {accepted} of {len(drafts)} drafts")

    def on_token(self, token: int) -> None:
        """Called by LLM.generate_ids for every generated token, in order."""
        traced = self._tracing
        if traced:
            self._flush()
        self._generated += 1
        label = self._labels.pop(0) if self._labels else f"main model logits at position {len(self._sequence) - 1}"
        self._sequence.append(int(token))
        if traced:
            self._line(f"token {self._generated}: {self._token(token)} ({label})")

    # --- writing ---

    def _write_header(self, prompt, ids: list[int]) -> None:
        cfg = self.llm.config
        pieces = " ".join(self._token(i) for i in ids)
        self._line(f"trace: prompt {prompt!r} -> {len(ids)} token ids: {pieces}")
        row = cfg.latent_dim * BYTES_PER_VALUE
        page_tokens = self.llm.memory.config.page_tokens
        self._line(f"trace: KV cache row per token per layer: c ({cfg.kv_lora_rank}) + k_rope "
                   f"({cfg.qk_rope_head_dim}) = {cfg.latent_dim} float32 = {row} B; "
                   f"x {cfg.num_hidden_layers} layers = {row * cfg.num_hidden_layers} B per token; "
                   f"page of {page_tokens} tokens = {format_size(row * cfg.num_hidden_layers * page_tokens)}")
        self._line("trace: KV pages are listed in position order by tier: h hbm, d dram, s ssd")

    def _flush(self) -> None:
        forward, self._forward = self._forward, None
        if forward is None or not forward.layers:
            return
        first = forward.layers[0].output
        positions = first.positions
        T = positions.size
        D = first.hidden.shape[1]
        kind = "prefill" if forward.prefill else "decode"
        path = "absorbed" if first.absorbed else "naive"
        rows = [T - 1] if forward.prefill else list(range(T))
        shown_positions = ", ".join(f"{int(positions[r])} ({self._token(self._sequence_id(int(positions[r]), forward))})"
                          for r in rows)
        self._line(f"forward {forward.index} ({kind}): positions {int(positions[0])}..{int(positions[-1])}, "
                   f"ids ({T},) -> embedding ({T}, {D}), {path} MLA; showing position {shown_positions}")
        for record in forward.layers:
            if record.layer in self.llm.transformer.engram:
                self._line(self._engram_line(forward))
            self._line(self._layer_line(record))
            for r in rows:
                self._line(self._row_line(record, r))

    def _layer_line(self, record: _LayerRecord) -> str:
        """Format what the layer did for all T positions: cache rows appended, pages read, experts loaded."""
        out = record.output
        kind = "moe" if out.expert_indices is not None else "dense"
        text = (f"  layer {record.layer} ({kind}): appended cache rows {out.cache_entries.shape}, "
                f"read KV pages {record.page_map}")
        if out.expert_indices is not None:
            text += f", expert cache hits {record.expert_hits} misses {record.expert_misses}"
            if record.streamed_bytes:
                text += f" ({format_size(record.streamed_bytes)} streamed from dram)"
        return text

    def _engram_line(self, forward: _Forward) -> str:
        """Format the Engram rows this pass gathered (before layer 0) and added before this layer's attention."""
        counts = forward.engram
        return (f"  engram before attention: {counts['engram_lookups']} table lookups, "
                f"{counts['engram_rows']} distinct rows read ({format_size(counts['engram_bytes_read'])} from dram), "
                "gathered before layer 0")

    def _row_line(self, record: _LayerRecord, row: int) -> str:
        """Format one position's numbers after the layer."""
        cfg = self.llm.config
        out = record.output
        position = int(out.positions[row])
        latent = out.cache_entries[row, : cfg.kv_lora_rank]
        k_rope = out.cache_entries[row, cfg.kv_lora_rank :]
        text = (f"    pos {position}: |h| {np.linalg.norm(out.hidden[row]):.2f}, attention entropy "
                f"{float(out.attention_entropy[row]):.3f} over {position + 1} keys, cached |c| "
                f"{np.linalg.norm(latent):.2f} |k_rope| {np.linalg.norm(k_rope):.2f}")
        if out.expert_indices is not None:
            chosen = " ".join(f"{int(e)}:{float(w):.3f}"
                              for e, w in zip(out.expert_indices[row], out.expert_weights[row]))
            if cfg.uses_groups:
                size = cfg.n_routed_experts // cfg.n_group
                groups = sorted({int(e) // size for e in out.expert_indices[row]})
                chosen += f" (groups {' '.join(map(str, groups))})"
            shared = f" + {cfg.n_shared_experts} shared" if cfg.n_shared_experts else ""
            text += f", experts {chosen}{shared}"
        return text

    def _sequence_id(self, position: int, forward: _Forward | None = None) -> int:
        """Look up the token id at a position: prompt or generated, else a draft of the current pass."""
        if position < len(self._sequence):
            return self._sequence[position]
        offset = position - len(self._sequence)
        if forward is not None and offset < len(forward.drafts):
            return forward.drafts[offset]
        return -1

    def _token(self, token: int) -> str:
        if token < 0:
            return "?"
        if self._tokenizer is None:
            return str(token)
        return f"{token} {self._tokenizer.decode([token], skip_special_tokens=False)!r}"

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
