"""The DeepSeek decoder stack: embedding, N x (RMSNorm -> MLA -> RMSNorm -> FFN), final norm, head.

Layers before first_k_dense_replace use a dense SwiGLU FFN, the rest DeepSeekMoE. Layers named in
the config's Engram block first add Engram's n-gram memory to the residual stream. All compute is
float32; the caller owns the latent KV cache and passes one cache object per layer, plus an
EngramState when the model has Engram layers.
Shape legend: T tokens, D model width, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from minillm.config import ModelConfig
from minillm.model.engram import EngramLayer, EngramState, EngramWeights
from minillm.model.mla import MLA, AttentionWeights
from minillm.model.moe import MoEWeights, moe_forward
from minillm.model.norm import linear, rms_norm, swiglu
from minillm.model.rope import Rotary


@dataclass
class DenseWeights:
    gate: np.ndarray  # (F, D)
    up: np.ndarray  # (F, D)
    down: np.ndarray  # (D, F)


@dataclass
class LayerWeights:
    input_norm: np.ndarray  # (D,)
    attention: AttentionWeights
    post_attention_norm: np.ndarray  # (D,)
    ffn: DenseWeights | MoEWeights
    engram: EngramWeights | None = None


@dataclass
class MTPWeights:
    """One multi-token-prediction module, stored as layer num_hidden_layers + k."""

    embed_norm: np.ndarray  # (D,) enorm
    hidden_norm: np.ndarray  # (D,) hnorm
    eh_proj: np.ndarray  # (D, 2D): columns 0..D-1 take the embedding, D..2D-1 the hidden state
    block: LayerWeights
    head_norm: np.ndarray  # (D,) shared_head.norm
    embed: np.ndarray | None = None  # (V, D); None shares the main embedding
    head: np.ndarray | None = None  # (V, D); None shares the main LM head


@dataclass
class ModelWeights:
    embed: np.ndarray  # (V, D)
    layers: list[LayerWeights]
    norm: np.ndarray  # (D,)
    lm_head: np.ndarray  # (V, D), the embedding itself when tie_word_embeddings is true
    mtp: list[MTPWeights] = field(default_factory=list)


@dataclass
class LayerOutput:
    """What one layer did, for statistics and tracing (routing is None on dense layers).

    The fields after the routing are filled only while the layer's MLA has `trace` set; they are
    references to arrays the forward pass computed anyway.
    """

    expert_indices: np.ndarray | None = None  # (T, K)
    expert_weights: np.ndarray | None = None  # (T, K)
    hidden: np.ndarray | None = None  # (T, D) residual stream after the layer
    positions: np.ndarray | None = None  # (T,)
    absorbed: bool | None = None  # attention path: absorbed (True) or naive (False)
    cache_entries: np.ndarray | None = None  # (T, C + R) what the layer appended to its latent cache
    attention_entropy: np.ndarray | None = None  # (T,) nats, mean over heads


class Transformer:
    def __init__(self, config: ModelConfig, weights: ModelWeights):
        self.config = config
        self.weights = weights
        self.rotary = Rotary(config.rope, config.qk_rope_head_dim)
        self.attention = [MLA(config, layer.attention, self.rotary) for layer in weights.layers]
        self.engram = {i: EngramLayer(config.engram, layer.engram, config.rms_norm_eps)
                       for i, layer in enumerate(weights.layers) if layer.engram is not None}
        self.observer = None  # default `observe` for hidden_states: statistics and tracing hook in here

    def block(self, index: int, layer: LayerWeights, attention: MLA, h: np.ndarray, positions: np.ndarray,
              cache=None, absorbed: bool = False) -> tuple[np.ndarray, LayerOutput]:
        """Run one decoder layer on h (T, D), in pre-norm residual form."""
        eps = self.config.rms_norm_eps
        h = h + attention.forward(rms_norm(h, layer.input_norm, eps), positions, cache, absorbed)
        x = rms_norm(h, layer.post_attention_norm, eps)
        if isinstance(layer.ffn, MoEWeights):
            out, indices, weights = moe_forward(self.config, layer.ffn, x)
            h, output = h + out, LayerOutput(indices, weights)
        else:
            h, output = h + swiglu(x, layer.ffn.gate, layer.ffn.up, layer.ffn.down), LayerOutput()
        if attention.trace:
            output.hidden, output.positions, output.absorbed = h, positions, absorbed
            output.cache_entries, output.attention_entropy = attention.last_entries, attention.last_entropy
        return h, output

    def new_engram_state(self, capacity: int = 256) -> EngramState | None:
        """Fresh per-sequence Engram state, or None when the model has no Engram layer."""
        return EngramState(self.engram, self.config.hidden_size, capacity) if self.engram else None

    def hidden_states(self, ids: np.ndarray, positions: np.ndarray, caches=None, absorbed: bool = False,
                      observe=None, engram: EngramState | None = None) -> np.ndarray:
        """Final-normed hidden states (T, D) for token ids (T,) at positions (T,).

        `caches` is None (no cache: the ids are the whole sequence) or one cache per layer.
        `engram` holds the sequence's earlier tokens for the Engram layers; it may be left out
        when there is no cache. `observe(layer_index, LayerOutput)` is called after each layer.
        """
        observe = observe or self.observer
        gathered = {}
        if self.engram:
            if engram is None:
                if caches is not None:
                    raise ValueError("this model has Engram layers: pass the EngramState that goes with the caches")
                engram = self.new_engram_state(int(positions[-1]) + 1)
            gathered = engram.prepare(ids, positions)  # rows for every Engram layer, before layer 0 runs
        h = self.weights.embed[ids]  # (T, D)
        for i, layer in enumerate(self.weights.layers):
            cache = None if caches is None else caches[i]
            if i in gathered:
                h = h + self.engram[i].forward(h, gathered[i], engram.history[i], positions)
            h, output = self.block(i, layer, self.attention[i], h, positions, cache, absorbed)
            if observe is not None:
                observe(i, output)
        return rms_norm(h, self.weights.norm, self.config.rms_norm_eps)

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        """(T, D) final hidden states -> (T, V) float32 logits."""
        return linear(hidden, self.weights.lm_head)
