"""Decode and verification steps on Numba kernels, over buffers allocated once.

A step runs T rows: 1 for plain decoding, k + 1 when verifying k MTP drafts. Per layer it calls
1. `mla_project`: norm, query and latent projections, RoPE;
2. the paged cache's `append`, in Python, because it decides tiers and counts bytes;
3. `mla_finish`: absorbed attention, output projection, residual, the FFN's norm;
4. `swiglu_add` for the dense FFN or the shared expert, then `route_into` and one `expert_add`
   per chosen expert, each adding into the residual stream.
Every array a step writes lives in `RunState`, so a steady-state step allocates no NumPy memory
(tests/test_numba_forward.py checks it). Prefill, more rows than the buffers hold, and tracing go
to the NumPy path.
Shape legend: T rows, D model width, V vocabulary, H heads, E routed experts, K chosen per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from minillm.engine.forward import NumpyForward
from minillm.engine.kv_cache import LatentCache
from minillm.engine.sampler import Sampler, SamplingParams
from minillm.kernels.engram import engram_add, engram_lookup
from minillm.kernels.layer import final_logits, mla_finish, mla_project, mtp_input
from minillm.kernels.linear import float32_to_bf16
from minillm.kernels.moe import Routing, expert_add, route_into, swiglu_add
from minillm.model.engram import CONV_NORM_EPS, GATE_FLOOR, EngramLayer, EngramState
from minillm.memory.expert_cache import StreamedExperts
from minillm.model.mla import LATENT_NORM_EPS
from minillm.model.moe import MoEWeights
from minillm.model.transformer import DenseWeights, LayerOutput, LayerWeights

MAX_ROWS = 8  # rows per step the buffers hold: the pending token plus up to 7 drafts


def _f32(array: np.ndarray | None, ndim: int = 2) -> np.ndarray:
    """Return a C-contiguous float32 array for the kernels; None becomes an empty one."""
    if array is None:
        return np.zeros((0,) * ndim, dtype=np.float32)
    return np.ascontiguousarray(array, dtype=np.float32)


def _matrix(array: np.ndarray | None) -> np.ndarray:
    """Return a weight matrix for the kernels: BF16 bits when that is exact (a BF16 checkpoint),
    which halves the bytes a step streams, else float32."""
    if array is None:
        return _f32(None)
    bits = float32_to_bf16(array)
    return bits if bits is not None else _f32(array)


@dataclass
class FastLayer:
    """One decoder layer's weights in the form the kernels take."""

    input_norm: np.ndarray
    q_a: np.ndarray  # (Q, D), or the full query projection (H * (N + R), D) without a query LoRA
    q_a_norm: np.ndarray
    q_b: np.ndarray  # (H * (N + R), Q), or empty
    kv_a: np.ndarray
    kv_a_norm: np.ndarray
    w_uk: np.ndarray  # (H, N, C)
    w_uv: np.ndarray  # (H, V, C)
    o: np.ndarray
    post_norm: np.ndarray
    ffn: DenseWeights | MoEWeights
    dense: tuple[np.ndarray, ...] | None  # (gate, up, down) of the dense FFN or of the shared experts
    bias: np.ndarray  # (E,) correction bias, or empty
    experts: object = None  # .get(e) -> (gate, up, down): the routed experts, None on a dense layer
    routing: Routing | None = None  # how route_into chooses, set by NumbaForward

    @property
    def project(self) -> tuple:
        """mla_project's weight arguments."""
        return self.input_norm, self.q_a, self.q_a_norm, self.q_b, self.kv_a, self.kv_a_norm

    @property
    def attend(self) -> tuple:
        """mla_finish's weight arguments before the key blocks."""
        return self.w_uk, self.w_uv, self.o

    @property
    def routed(self) -> bool:
        return isinstance(self.ffn, MoEWeights)

    @classmethod
    def build(cls, layer: LayerWeights, w_uk: np.ndarray, w_uv: np.ndarray) -> FastLayer:
        a, ffn = layer.attention, layer.ffn
        direct = a.q is not None
        if isinstance(ffn, MoEWeights):
            dense = None if ffn.shared_gate is None else (ffn.shared_gate, ffn.shared_up, ffn.shared_down)
            bias = ffn.bias
        else:
            dense, bias = (ffn.gate, ffn.up, ffn.down), None
        return cls(_f32(layer.input_norm, 1), _matrix(a.q if direct else a.q_a),
                   _f32(None if direct else a.q_a_norm, 1),
                   _matrix(None if direct else a.q_b), _matrix(a.kv_a), _f32(a.kv_a_norm, 1), _f32(w_uk), _f32(w_uv),
                   _matrix(a.o), _f32(layer.post_attention_norm, 1), ffn,
                   None if dense is None else tuple(_matrix(m) for m in dense), _f32(bias, 1),
                   ffn.experts if isinstance(ffn, MoEWeights) else None)


@dataclass
class FastEngram:
    """One Engram layer's tables and weights in the form the kernels take."""

    lookup: tuple  # engram_lookup's arguments after the positions: compressed ids .. table
    weights: tuple  # engram_add's arguments after the positions: key_proj .. ngram, eps
    row_bytes: int  # bytes of one stored table row

    @classmethod
    def build(cls, layer: EngramLayer) -> FastEngram | None:
        """Return None when no kernel reads the table's dtype (F16), so that the model stays on NumPy."""
        w, cfg = layer.w, layer.config
        stored = w.table.stored
        if stored.dtype not in (np.uint16, np.float32):
            return None
        lookup = (w.compressed_ids, np.int64(layer.pad), w.multipliers, w.table_sizes, layer.offsets,
                  cfg.n_head_per_ngram, stored)
        weights = (_matrix(w.key_proj), _f32(w.key_bias, 1), _f32(w.key_norm, 1), _f32(w.query_norm, 1),
                   _matrix(w.value_proj), _f32(w.value_bias, 1), _f32(w.conv), _f32(w.conv_norm, 1),
                   cfg.max_ngram_size, np.float32(layer.eps), np.float32(CONV_NORM_EPS), np.float32(GATE_FLOOR))
        return cls(lookup, weights, stored[0].nbytes)


class RunState:
    """Every buffer a step writes, for up to `rows` rows. Views of these are what steps return."""

    def __init__(self, config, rows: int):
        D, H, C = config.hidden_size, config.num_attention_heads, config.kv_lora_rank
        E, K = config.n_routed_experts or 1, config.num_experts_per_tok or 1
        expert_width = config.moe_intermediate_size or 0
        # hidden widths of the dense FFN, the shared experts (fused) and one routed expert
        ffn_widths = {config.intermediate_size or 0, expert_width * (config.n_shared_experts or 0), expert_width} - {0}
        f32 = lambda *shape: np.zeros(shape, dtype=np.float32)  # noqa: E731

        self.rows = rows
        self.ids = np.zeros(rows, dtype=np.int64)
        self.positions = np.zeros(rows, dtype=np.int64)
        self.steps = np.arange(rows, dtype=np.int64)
        self.h, self.x, self.delta, self.final = f32(rows, D), f32(rows, D), f32(rows, D), f32(rows, D)
        self.joined = f32(rows, 2 * D)
        self.q_low = f32(rows, config.q_lora_rank or 1)
        self.q = f32(rows, H * config.qk_head_dim)
        self.entries = f32(rows, config.latent_dim)
        self.attn = f32(rows, H * config.v_head_dim)
        # attention: one row per (row, head) query
        self.queries, self.mixed = f32(rows * H, config.latent_dim), f32(rows * H, C)
        self.peaks, self.totals = f32(rows * H), f32(rows * H)
        self.scores = f32(rows * H * 256)  # grows with the context

        self.ffn = {width: (f32(rows, width), f32(rows, width)) for width in ffn_widths}  # width -> gate, up
        self.router_logits, self.choice, self.group_scores = f32(rows, E), f32(E), f32(max(1, config.n_group or 1))
        self.indices = np.zeros((rows, K), dtype=np.int64)
        self.weights = f32(rows, K)
        self.row_weights = f32(rows)
        self.picked, self.picked_rows = f32(rows, D), np.zeros(rows, dtype=np.int64)  # one expert's rows
        self.ones = np.ones(rows, dtype=np.float32)
        self.logits = f32(rows, config.vocab_size)

        if config.engram is not None:
            R = (config.engram.max_ngram_size - 1) * config.engram.n_head_per_ngram
            gathered = (config.engram.max_ngram_size - 1) * config.engram.n_embed_per_ngram
            self.engram_rows = np.zeros((rows, R), dtype=np.int64)
            self.embedded = f32(rows, gathered)
            self.engram_scratch = (f32(rows, D), f32(rows, D), f32(rows, D))  # key, query, value

        self._views: dict[int, SimpleNamespace] = {}
        self.no_keys = f32(0, config.latent_dim)
        self.no_positions = np.zeros(0, dtype=np.int64)

    ROW_BUFFERS = ("ids", "positions", "h", "x", "delta", "final", "joined", "q_low", "q", "entries", "attn",
                   "router_logits", "indices", "weights", "row_weights", "picked", "picked_rows", "ones", "logits")

    def views(self, T: int) -> SimpleNamespace:
        """Return the first T rows of every per-row buffer, as views made once per T."""
        views = self._views.get(T)
        if views is None:
            views = SimpleNamespace(**{name: getattr(self, name)[:T] for name in self.ROW_BUFFERS})
            views.ffn = {width: (gate[:T], up[:T]) for width, (gate, up) in self.ffn.items()}
            if hasattr(self, "engram_rows"):
                views.engram_rows, views.embedded = self.engram_rows[:T], self.embedded[:T]
                views.engram_scratch = tuple(scratch[:T] for scratch in self.engram_scratch)
            self._views[T] = views
        return views

    def scores_for(self, keys: int) -> np.ndarray:
        """Return the scores buffer, grown to hold every query row's scores over `keys` keys."""
        needed = self.queries.shape[0] * keys
        if self.scores.size < needed:
            self.scores = np.zeros(max(needed, 2 * self.scores.size), dtype=np.float32)
        return self.scores


class NumbaForward(NumpyForward):
    """Numba decode steps; prefill and anything the kernels do not cover run on NumPy."""

    name = "numba"

    def __init__(self, transformer, mtp=None, rows: int = MAX_ROWS):
        super().__init__(transformer, mtp)
        cfg = self.config = transformer.config
        self.layers = [FastLayer.build(layer, attention.w_uk, attention.w_uv)
                       for layer, attention in zip(transformer.weights.layers, transformer.attention)]
        self.state = RunState(cfg, rows)
        blocks = transformer.weights.layers + ([mtp.w.block] if mtp is not None else [])
        for layer in blocks:
            if isinstance(layer.ffn, MoEWeights) and isinstance(layer.ffn.experts, StreamedExperts):
                layer.ffn.experts.load = _bf16_loader(layer.ffn.experts.load)
        self.engram = {i: FastEngram.build(layer) for i, layer in transformer.engram.items()}
        self.covered = all(layer is not None for layer in self.engram.values())  # else all on NumPy
        self.norm = _f32(transformer.weights.norm, 1)
        self.head = _matrix(transformer.weights.lm_head)
        if mtp is not None:
            self.mtp_layer = FastLayer.build(mtp.w.block, mtp.attention.w_uk, mtp.attention.w_uv)
            self.mtp_state = RunState(cfg, rows)
            head = self.head if mtp.head is transformer.weights.lm_head else _matrix(mtp.head)
            self.mtp_head = head[: mtp.draft_vocab]  # the draft vocabulary: the lowest ids (see model/mtp.py)
            self.draft = np.full((1, cfg.vocab_size), -np.inf, dtype=np.float32)  # -inf past the draft vocabulary
            self.draft_scores = self.draft[:, : mtp.draft_vocab]  # one row, so C-contiguous for the kernels
            self.mtp_norms = (_f32(mtp.w.embed_norm, 1), _f32(mtp.w.hidden_norm, 1), _f32(mtp.w.head_norm, 1))
            self.eh_proj = _matrix(mtp.w.eh_proj)
        self.eps = np.float32(cfg.rms_norm_eps)
        self.project_constants = (self.eps, np.float32(LATENT_NORM_EPS), cfg.num_attention_heads, cfg.qk_nope_head_dim)
        self.scale = np.float32(cfg.softmax_scale)
        routing = Routing.from_config(cfg)
        for layer in self.layers + ([self.mtp_layer] if mtp is not None else []):
            # a checkpoint without the correction bias chooses by the plain scores, as `route` does
            layer.routing = routing._replace(correction=routing.correction and layer.bias.size > 0)

    def warm_up(self) -> None:
        """Load every kernel now, or compile it the first time (8 s on the 2-core benchmark machine),
        by running one throwaway step on scratch caches, so that no generation's first step pays for
        it. Nothing is counted: the step bypasses the expert cache and the routing statistics."""
        if not self.covered:
            return
        cfg, transformer = self.config, self.transformer
        caches = [LatentCache(cfg.latent_dim, 4) for _ in range(cfg.num_hidden_layers)]
        engram = EngramState(transformer.engram, cfg.hidden_size, 8) if transformer.engram else None
        layers = self.layers + ([self.mtp_layer] if self.mtp_module is not None else [])
        sources = [layer.experts for layer in layers]
        observer, transformer.observer = transformer.observer, None
        try:
            for layer in layers:
                layer.experts = _Uncounted(layer.experts)
            hidden, logits = self.decode([0], 0, caches, engram)
            if self.mtp_module is not None:
                zero = np.zeros(1, dtype=np.int64)
                self.mtp(hidden, zero, zero, LatentCache(cfg.latent_dim, 4))
            sampler = Sampler(SamplingParams(temperature=1.0, top_k=2, top_p=0.5, seed=0), kernels=True)
            sampler(logits[0])
        finally:
            transformer.observer = observer
            for layer, source in zip(layers, sources):
                layer.experts = source

    def _fast(self, rows: int, absorbed: bool = True) -> bool:
        return (absorbed and rows <= self.state.rows and self.covered
                and not any(a.trace for a in self.transformer.attention))

    def decode(self, tokens: list[int], start: int, caches, engram=None) -> tuple[np.ndarray, np.ndarray]:
        T = len(tokens)
        if not self._fast(T):
            return super().decode(tokens, start, caches, engram)
        v = self.state.views(T)
        for i, token in enumerate(tokens):
            v.ids[i] = token
        np.add(self.state.steps[:T], start, out=v.positions)
        np.take(self.transformer.weights.embed, v.ids, axis=0, out=v.h, mode="clip")  # the caller checked the ids
        if self.engram:
            if engram is None:
                raise ValueError("this model has Engram layers: pass the EngramState that goes with the caches")
            engram.record(v.ids, v.positions)
        cos, sin = self.transformer.rotary.tables(start + T)
        observe = self.transformer.observer
        for i, layer in enumerate(self.layers):
            if i in self.engram:
                self._engram(i, v, engram)
            self._layer(layer, self.state, v, cos, sin, caches[i])
            if observe is not None and layer.routed:
                observe(i, LayerOutput(v.indices, v.weights))
        final_logits(v.h, self.norm, self.eps, self.head, v.final, v.logits)
        return v.final, v.logits

    def mtp(self, hidden, next_ids, positions, cache, absorbed: bool = True):
        T = next_ids.size
        if not self._fast(T, absorbed):
            return super().mtp(hidden, next_ids, positions, cache, absorbed)
        m, v = self.mtp_module, self.mtp_state.views(T)
        v.positions[:] = positions
        np.take(m.embed, next_ids, axis=0, out=v.x, mode="clip")
        embed_norm, hidden_norm, head_norm = self.mtp_norms
        mtp_input(v.x, hidden, embed_norm, hidden_norm, self.eps, self.eh_proj, v.joined, v.h)
        cos, sin = self.transformer.rotary.tables(int(positions[-1]) + 1)
        self._layer(self.mtp_layer, self.mtp_state, v, cos, sin, cache)
        last = slice(T - 1, T)  # only the last row's draft is used: the others' LM head would be wasted work
        final_logits(v.h[last], head_norm, self.eps, self.mtp_head, v.final[last], self.draft_scores)
        return v.h, self.draft

    def _engram(self, index: int, v: SimpleNamespace, state) -> None:
        """Add layer `index`'s Engram output to the rows of v.h; their tokens are recorded in `state`."""
        fast = self.engram[index]
        distinct = engram_lookup(state.ids, v.positions, *fast.lookup, v.engram_rows, v.embedded)
        if state.on_gather is not None:
            state.on_gather(v.engram_rows.size, distinct, distinct * fast.row_bytes)
        engram_add(v.h, v.embedded, v.positions, *fast.weights, state.history[index], *v.engram_scratch)

    def _layer(self, w: FastLayer, s: RunState, v: SimpleNamespace, cos: np.ndarray, sin: np.ndarray, cache) -> None:
        """Run one decoder layer on the rows of v.h, in place."""
        mla_project(v.h, *w.project, cos, sin, v.positions, *self.project_constants, v.x, v.q_low, v.q, v.entries)
        blocks = cache.append(v.entries)
        keys_a, positions_a = blocks[0]
        keys_b, positions_b = blocks[1] if len(blocks) > 1 else (s.no_keys, s.no_positions)
        scores = s.scores_for(keys_a.shape[0] + keys_b.shape[0])
        mla_finish(v.h, v.q, v.positions, *w.attend, keys_a, positions_a, keys_b, positions_b, self.scale,
                   w.post_norm, self.eps, s.queries, s.mixed, s.peaks, s.totals, scores, v.attn, v.delta, v.x)
        if w.dense is not None:  # the dense FFN, or the shared experts of a MoE layer: every row weighs 1
            gate, up = v.ffn[w.dense[0].shape[0]]  # scratch as wide as this FFN's hidden layer
            swiglu_add(v.x, *w.dense, v.ones, gate, up, v.delta, v.h)
        if not w.routed:
            return
        route_into(v.x, w.ffn.gate, w.bias, w.routing, v.router_logits, s.choice, s.group_scores, v.indices,
                   v.weights)
        gate, up = v.ffn[self.config.moe_intermediate_size]
        for expert in _distinct(v.indices):
            expert_add(v.x, *w.experts.get(expert), expert, v.indices, v.weights, v.picked, v.picked_rows,
                       v.row_weights, gate, up, v.delta, v.h)


class _Uncounted:
    """Routed experts read straight from their source, past the expert cache and its counters."""

    def __init__(self, source):
        self.source = source

    def get(self, expert: int):
        if isinstance(self.source, StreamedExperts):
            return self.source.load(expert)[0]
        return self.source.get(expert)


def _bf16_loader(load):
    """Wrap an expert loader so that experts enter the expert cache as BF16 bits where that is
    exact: half the hbm bytes, and half the bytes each step streams. The NumPy path widens them."""
    def load_bf16(expert: int):
        matrices, stored_bytes = load(expert)
        return tuple(_matrix(m) for m in matrices), stored_bytes
    return load_bf16


def _distinct(indices: np.ndarray) -> list[int]:
    """Return the distinct experts in indices (T, K), ascending. The NumPy path fetches them in that
    order too, so both backends leave the expert cache in the same state."""
    return sorted({int(expert) for expert in indices.flat})
