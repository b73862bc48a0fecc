"""Decode and verification steps on Numba kernels, over buffers allocated once.

A step of T rows (1 for plain decoding, k + 1 when verifying k MTP drafts) runs per layer:
`mla_project` (norm, query and latent projections, RoPE), the paged cache's append (Python: it
decides tiers and counts bytes), `mla_finish` (absorbed attention, output projection, residual,
FFN norm), then the FFN: `route_into` and one `swiglu_add` per chosen expert plus the shared
expert, each adding into the residual stream. Every array a step writes lives in `RunState`,
so a steady-state step allocates no NumPy memory (tests/test_numba_forward.py checks it).
Prefill, more rows than the buffers hold, and tracing go to the NumPy path.
Shape legend: T rows, D model width, V vocabulary, H heads, E routed experts, K chosen per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minillm.engine.forward import NumpyForward
from minillm.kernels.engram import engram_add, engram_lookup
from minillm.kernels.layer import final_logits, mla_finish, mla_project, mtp_input
from minillm.kernels.linear import float32_to_bf16
from minillm.kernels.moe import route_into, swiglu_add
from minillm.model.engram import CONV_NORM_EPS, GATE_FLOOR, EngramLayer
from minillm.memory.expert_cache import StreamedExperts
from minillm.model.mla import LATENT_NORM_EPS
from minillm.model.moe import MoEWeights
from minillm.model.transformer import DenseWeights, LayerOutput, LayerWeights

MAX_ROWS = 8  # rows per step the buffers hold: the pending token plus up to 7 drafts
EMPTY_F32 = np.zeros((0, 0), dtype=np.float32)


def _f32(array: np.ndarray | None, ndim: int = 2) -> np.ndarray:
    """A C-contiguous float32 array for the kernels; None becomes an empty one."""
    if array is None:
        return np.zeros((0,) * ndim, dtype=np.float32)
    return np.ascontiguousarray(array, dtype=np.float32)


def _matrix(array: np.ndarray | None) -> np.ndarray:
    """A weight matrix for the kernels: BF16 bits when that is exact (a BF16 checkpoint), which
    halves the bytes a step streams, else float32."""
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
    ffn: DenseWeights | MoEWeights  # the routed experts come from here
    dense: tuple[np.ndarray, ...] | None  # (gate, up, down) of the dense FFN or of the shared experts
    bias: np.ndarray  # (E,) correction bias, or empty

    @classmethod
    def build(cls, layer: LayerWeights, w_uk: np.ndarray, w_uv: np.ndarray) -> FastLayer:
        a, ffn = layer.attention, layer.ffn
        direct = a.q is not None
        if isinstance(ffn, MoEWeights):
            dense = None if ffn.shared_gate is None else (ffn.shared_gate, ffn.shared_up, ffn.shared_down)
            bias = ffn.bias
        else:
            dense, bias = (ffn.gate, ffn.up, ffn.down), None
        return cls(_f32(layer.input_norm, 1), _matrix(a.q if direct else a.q_a), _f32(None if direct else a.q_a_norm, 1),
                   _matrix(None if direct else a.q_b), _matrix(a.kv_a), _f32(a.kv_a_norm, 1), _f32(w_uk), _f32(w_uv),
                   _matrix(a.o), _f32(layer.post_attention_norm, 1), ffn,
                   None if dense is None else tuple(_matrix(m) for m in dense), _f32(bias, 1))


@dataclass
class FastEngram:
    """One Engram layer's tables and weights in the form the kernels take."""

    lookup: tuple  # engram_lookup's arguments after the positions: compressed ids .. table
    weights: tuple  # engram_add's arguments after the positions: key_proj .. ngram, eps
    row_bytes: int  # bytes of one stored table row

    @classmethod
    def build(cls, layer: EngramLayer) -> FastEngram | None:
        """None when the table's dtype has no kernel (F16): that layer stays on NumPy."""
        w, cfg = layer.w, layer.config
        stored = w.table.stored
        if stored.dtype not in (np.uint16, np.float32):
            return None
        lookup = (w.compressed_ids, np.int64(layer.pad), w.multipliers, w.table_sizes, layer.offsets,
                  cfg.n_head_per_ngram, stored)
        weights = (_matrix(w.key_proj), _f32(w.key_bias, 1), _f32(w.key_norm, 1), _f32(w.query_norm, 1),
                   _matrix(w.value_proj), _f32(w.value_bias, 1), _f32(w.conv), _f32(w.conv_norm, 1),
                   cfg.max_ngram_size, np.float32(layer.eps))
        return cls(lookup, weights, stored[0].nbytes)


class RunState:
    """Every buffer a step writes, for up to `rows` rows. Views of these are what steps return."""

    def __init__(self, config, rows: int):
        D, H, C = config.hidden_size, config.num_attention_heads, config.kv_lora_rank
        widths = [config.intermediate_size or 0, (config.moe_intermediate_size or 0) * (config.n_shared_experts or 0)]
        E, K = config.n_routed_experts or 1, config.num_experts_per_tok or 1
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
        self.query, self.mixed = f32(config.latent_dim), f32(C)
        self.scores = f32(1024)  # grows with the context
        widths = {w for w in widths + [config.moe_intermediate_size or 0] if w}
        self.ffn = {w: (f32(rows, w), f32(rows, w)) for w in widths}  # FFN width -> gate and up scratch
        self.router_logits, self.choice, self.group_scores = f32(rows, E), f32(E), f32(max(1, config.n_group or 1))
        self.indices = np.zeros((rows, K), dtype=np.int64)
        self.weights = f32(rows, K)
        self.row_weights = f32(rows)
        self.ones = np.ones(rows, dtype=np.float32)
        self.logits = f32(rows, config.vocab_size)
        if config.engram is not None:
            R = (config.engram.max_ngram_size - 1) * config.engram.n_head_per_ngram
            self.engram_rows = np.zeros((rows, R), dtype=np.int64)
            self.embedded = f32(rows, (config.engram.max_ngram_size - 1) * config.engram.n_embed_per_ngram)
            self.engram_scratch = (f32(rows, D), f32(rows, D), f32(rows, D))  # key, query, value
        self.no_keys = f32(0, config.latent_dim)
        self.no_positions = np.zeros(0, dtype=np.int64)

    def scores_for(self, keys: int) -> np.ndarray:
        if self.scores.size < keys:
            self.scores = np.zeros(max(keys, 2 * self.scores.size), dtype=np.float32)
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
            self.mtp_head = self.head if mtp.head is transformer.weights.lm_head else _matrix(mtp.head)
            self.mtp_norms = (_f32(mtp.w.embed_norm, 1), _f32(mtp.w.hidden_norm, 1), _f32(mtp.w.head_norm, 1))
            self.eh_proj = _matrix(mtp.w.eh_proj)
        groups = cfg.n_group if cfg.uses_groups else 1
        self.routing = (cfg.scoring_func == "sigmoid", cfg.topk_method == "noaux_tc", groups, cfg.topk_group or 1,
                        cfg.topk_method == "noaux_tc", bool(cfg.norm_topk_prob), np.float32(cfg.routed_scaling_factor))

    def _fast(self, rows: int, absorbed: bool = True) -> bool:
        return (absorbed and rows <= self.state.rows and self.covered
                and not any(a.trace for a in self.transformer.attention))

    def decode(self, tokens: list[int], start: int, caches, engram=None) -> tuple[np.ndarray, np.ndarray]:
        T = len(tokens)
        if not self._fast(T):
            return super().decode(tokens, start, caches, engram)
        s = self.state
        ids, positions = s.ids[:T], s.positions[:T]
        for i, token in enumerate(tokens):
            ids[i] = token
        np.add(s.steps[:T], start, out=positions)
        h = s.h[:T]
        np.take(self.transformer.weights.embed, ids, axis=0, out=h, mode="clip")  # ids are checked by the caller
        if self.engram:
            engram.record(ids, positions)
        observe = self.transformer.observer
        for i, layer in enumerate(self.layers):
            if i in self.engram:
                self._engram(i, s, T, positions, engram)
            self._layer(i, layer, s, T, positions, caches[i])
            if observe is not None and isinstance(layer.ffn, MoEWeights):
                observe(i, LayerOutput(s.indices[:T], s.weights[:T]))
        final_logits(h, self.norm, self.config.rms_norm_eps, self.head, s.final[:T], s.logits[:T])
        return s.final[:T], s.logits[:T]

    def mtp(self, hidden, next_ids, positions, cache, absorbed: bool = True):
        T = next_ids.size
        if not self._fast(T, absorbed):
            return super().mtp(hidden, next_ids, positions, cache, absorbed)
        s, m = self.mtp_state, self.mtp_module
        pos = s.positions[:T]
        pos[:] = positions
        embedded = s.x[:T]
        np.take(m.embed, next_ids, axis=0, out=embedded, mode="clip")
        h = s.h[:T]
        embed_norm, hidden_norm, head_norm = self.mtp_norms
        mtp_input(embedded, hidden, embed_norm, hidden_norm, self.config.rms_norm_eps, self.eh_proj, s.joined[:T], h)
        self._layer(m.layer_index, self.mtp_layer, s, T, pos, cache)
        final_logits(h, head_norm, self.config.rms_norm_eps, self.mtp_head, s.final[:T], s.logits[:T])
        return h, s.logits[:T]

    def _engram(self, index: int, s: RunState, T: int, positions: np.ndarray, state) -> None:
        """Add layer `index`'s Engram output to s.h[:T]; the tokens are recorded in `state`."""
        fast, h = self.engram[index], s.h[:T]
        rows, embedded = s.engram_rows[:T], s.embedded[:T]
        distinct = engram_lookup(state.ids, positions, *fast.lookup, rows, embedded)
        if state.on_gather is not None:
            state.on_gather(rows.size, distinct, distinct * fast.row_bytes)
        engram_add(h, embedded, positions, *fast.weights[:8], state.history[index], fast.weights[8],
                   fast.weights[9], np.float32(CONV_NORM_EPS), np.float32(GATE_FLOOR),
                   *(scratch[:T] for scratch in s.engram_scratch))

    def _layer(self, index: int, w: FastLayer, s: RunState, T: int, positions: np.ndarray, cache) -> None:
        """One decoder layer on s.h[:T], in place."""
        cfg, eps = self.config, self.config.rms_norm_eps
        h, x = s.h[:T], s.x[:T]
        rotary = self.transformer.rotary
        cos, sin = rotary.tables(int(positions[T - 1]) + 1)
        mla_project(h, w.input_norm, w.q_a, w.q_a_norm, w.q_b, w.kv_a, w.kv_a_norm, cos, sin, positions, eps,
                    LATENT_NORM_EPS, cfg.num_attention_heads, cfg.qk_nope_head_dim, x, s.q_low[:T], s.q[:T],
                    s.entries[:T])
        blocks = cache.append(s.entries[:T])
        keys_a, positions_a = blocks[0]
        keys_b, positions_b = blocks[1] if len(blocks) > 1 else (s.no_keys, s.no_positions)
        scores = s.scores_for(keys_a.shape[0] + keys_b.shape[0])
        mla_finish(h, s.q[:T], positions, w.w_uk, w.w_uv, w.o, keys_a, positions_a, keys_b, positions_b,
                   np.float32(cfg.softmax_scale), w.post_norm, eps, s.query, s.mixed, scores, s.attn[:T],
                   s.delta[:T], x)
        if w.dense is not None:  # the dense FFN, or the shared experts of a MoE layer
            self._swiglu(s, T, w.dense, s.ones[:T])
        if not isinstance(w.ffn, MoEWeights):
            return
        indices, weights = s.indices[:T], s.weights[:T]
        route_into(x, w.ffn.gate, w.bias, *self.routing, s.router_logits[:T], s.choice, s.group_scores, indices,
                   weights)
        row_weights = s.row_weights[:T]
        for expert in _distinct(indices):
            row_weights[:] = 0.0
            for t in range(T):
                for k in range(indices.shape[1]):
                    if indices[t, k] == expert:
                        row_weights[t] = weights[t, k]
            self._swiglu(s, T, w.ffn.experts.get(expert), row_weights)

    @staticmethod
    def _swiglu(s: RunState, T: int, matrices, row_weights: np.ndarray) -> None:
        gate, up = s.ffn[matrices[0].shape[0]]
        swiglu_add(s.x[:T], *matrices, row_weights, gate[:T], up[:T], s.delta[:T], s.h[:T])


def _bf16_loader(load):
    """Wrap an expert loader so that experts enter the expert cache as BF16 bits where that is
    exact: half the hbm bytes, and half the bytes each step streams. The NumPy path widens them."""
    def load_bf16(expert: int):
        matrices, stored_bytes = load(expert)
        return tuple(_matrix(m) for m in matrices), stored_bytes
    return load_bf16


def _distinct(indices: np.ndarray) -> list[int]:
    """The distinct experts in indices (T, K), ascending: the order the NumPy path fetches them in,
    so both backends leave the expert cache in the same state."""
    return sorted({int(expert) for expert in indices.flat})
