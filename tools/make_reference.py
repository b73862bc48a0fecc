"""Generate the golden reference fixtures in tests/fixtures with Hugging Face transformers.

Each fixture is a tiny, randomly initialised DeepseekV3ForCausalLM or DeepseekV2ForCausalLM
saved with save_pretrained, plus reference.npz with outputs that transformers computed in
float32 with eager attention from the weights as stored on disk. The engine's tests compare
against these files and never import torch.

Usage: python tools/make_reference.py [--out tests/fixtures]

Requires the "ref" extra (torch and transformers). The fixtures were generated with
transformers 5.25.0 and torch 2.13.0 (CPU); the script logs the versions it runs with.
Nothing is downloaded: every model is built from a config object and reloaded from a
local directory, and HF_HUB_OFFLINE is set before transformers is imported.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    DeepseekV2Config,
    DeepseekV2ForCausalLM,
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
)

logger = logging.getLogger("make_reference")

REPO_ROOT = Path(__file__).resolve().parents[1]
GREEDY_TOKENS = 32
# A prompt is re-drawn until every greedy step has at least this gap between the top two
# logits and every routing decision has at least ROUTING_MIN_MARGIN between the last chosen
# and the first rejected score. Transformers' own cached and uncached forwards differ by
# about 3e-6 in logits here, and an fp32 engine is expected to land within 1e-5 (an
# estimate), so these gaps keep argmax and top-k decisions clear of rounding.
GREEDY_MIN_MARGIN = 1e-3
ROUTING_MIN_MARGIN = 1e-4
MAX_PROMPT_ATTEMPTS = 100

# Dimensions shared by all fixtures unless a fixture overrides them. Every MLA size is
# distinct (q_lora_rank 32, kv_lora_rank 24, qk_nope_head_dim 12, qk_rope_head_dim 8,
# v_head_dim 10) so that a reshape or split along the wrong axis fails loudly.
BASE_CONFIG: dict[str, Any] = {
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 48,
    "moe_intermediate_size": 8,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    # MLA ignores grouped-query attention, but transformers divides num_attention_heads by
    # num_key_value_heads, and DeepseekV3Config defaults it to 128.
    "num_key_value_heads": 4,
    "q_lora_rank": 32,
    "kv_lora_rank": 24,
    "qk_nope_head_dim": 12,
    "qk_rope_head_dim": 8,
    "v_head_dim": 10,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "n_group": 1,
    "topk_group": 1,
    "first_k_dense_replace": 1,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": None,
    "tie_word_embeddings": False,
    "attention_bias": False,
}

BASE_V3: dict[str, Any] = {
    **BASE_CONFIG,
    "n_shared_experts": 1,
    "routed_scaling_factor": 2.5,
    "norm_topk_prob": True,
    # DeepseekV3Config does not declare these two keys, and its router never reads them
    # because it always routes with sigmoid scores and the bias-corrected group top-k.
    # Passed as extra keyword arguments they are still written to config.json, so the file
    # states the routing that transformers applies.
    "scoring_func": "sigmoid",
    "topk_method": "noaux_tc",
    # DeepseekV3Config defaults this to 1, but save_pretrained never writes MTP weights.
    "num_nextn_predict_layers": 0,
}

BASE_V2: dict[str, Any] = {
    **BASE_CONFIG,
    "n_shared_experts": 2,
    "routed_scaling_factor": 1.0,
    # transformers 5.25 ignores norm_topk_prob for V2, so only false describes what it computes.
    "norm_topk_prob": False,
    # DeepseekV2Config does not declare scoring_func and always uses softmax.
    "scoring_func": "softmax",
    "topk_method": "greedy",
}


@dataclasses.dataclass(frozen=True)
class FixtureSpec:
    """One fixture: the model to build, how to perturb and save it, and the prompt length."""

    name: str
    family: str  # "v3" or "v2"
    covers: str
    config: dict[str, Any]
    seed: int
    prompt_length: int = 16
    # e_score_correction_bias ~ bias_mean + bias_std * N(0, 1), V3 only.
    bias_mean: float = 0.0
    bias_std: float = 0.0
    save_dtype: torch.dtype = torch.float32
    max_shard_size: str | None = None
    # Rewrite config.json with the pre-5.0 keys found in hub checkpoints: a top-level
    # rope_theta and a rope_scaling dict, in place of rope_parameters.
    legacy_rope_keys: bool = False


def v3(**overrides: Any) -> dict[str, Any]:
    return {**BASE_V3, **overrides}


def v2(**overrides: Any) -> dict[str, Any]:
    return {**BASE_V2, **overrides}


FIXTURES: list[FixtureSpec] = [
    FixtureSpec(
        name="v3_sigmoid_groups",
        family="v3",
        covers="V3 noaux_tc routing: sigmoid scores, correction bias with negative entries, "
        "group-limited top-k, q_lora_rank, one dense layer then two MoE layers, renormalised weights",
        config=v3(
            num_hidden_layers=3,
            n_routed_experts=12,
            num_experts_per_tok=3,
            n_group=4,
            topk_group=2,
        ),
        seed=101,
        # A bias centred below zero makes many biased scores negative, so filling excluded
        # groups with 0.0 instead of -inf picks different experts for some tokens.
        bias_mean=-0.5,
        bias_std=0.4,
    ),
    FixtureSpec(
        name="v3_dense_prefix",
        family="v3",
        covers="first_k_dense_replace 2 of 3 layers",
        config=v3(num_hidden_layers=3, first_k_dense_replace=2, n_group=2, topk_group=1),
        seed=102,
        bias_std=0.2,
    ),
    FixtureSpec(
        name="v3_unnormalized",
        family="v3",
        covers="norm_topk_prob false with routed_scaling_factor 1.75, ungrouped (n_group 1)",
        config=v3(norm_topk_prob=False, routed_scaling_factor=1.75),
        seed=103,
        bias_std=0.2,
    ),
    FixtureSpec(
        name="v3_yarn_mscale",
        family="v3",
        covers="YaRN: blended frequencies, cos/sin factor from mscale/mscale_all_dim, "
        "softmax scale times mscale(mscale_all_dim)^2, prompt past original_max_position_embeddings",
        config=v3(
            max_position_embeddings=64,
            rope_parameters={
                "rope_type": "yarn",
                # With qk_rope_head_dim 8 and original length 16, theta 1000 and
                # beta_slow 0.25 put the YaRN ramp at (0, 0.5, 1, 1): one frequency pair is
                # kept, one is blended and two are divided by the factor. With the default
                # beta_slow 1 the ramp would be (0, 1, 1, 1) and leave blending untested.
                "rope_theta": 1000.0,
                "factor": 4.0,
                "original_max_position_embeddings": 16,
                "mscale": 1.0,
                "mscale_all_dim": 0.707,
                "beta_fast": 32,
                "beta_slow": 0.25,
            },
        ),
        seed=104,
        prompt_length=20,
        bias_std=0.2,
    ),
    FixtureSpec(
        name="v3_bf16",
        family="v3",
        covers="BF16 safetensors (correction bias kept F32, as in DeepSeek-V3 checkpoints); "
        "references computed in float32 from the BF16 values",
        config=v3(n_group=2, topk_group=1),
        seed=105,
        bias_std=0.2,
        save_dtype=torch.bfloat16,
    ),
    FixtureSpec(
        name="v3_sharded",
        family="v3",
        covers="weights split over several safetensors shards with model.safetensors.index.json",
        config=v3(n_group=2, topk_group=1),
        seed=106,
        bias_std=0.2,
        max_shard_size="100KB",
    ),
    FixtureSpec(
        name="v3_tied_embeddings",
        family="v3",
        covers="tie_word_embeddings true: no lm_head.weight on disk, the head is embed_tokens",
        config=v3(tie_word_embeddings=True),
        seed=107,
        bias_std=0.2,
    ),
    FixtureSpec(
        name="v2_softmax_greedy",
        family="v2",
        covers="V2 softmax scores, greedy top-k, routed_scaling_factor 1.5, two shared experts, "
        "complex-pair RoPE",
        config=v2(routed_scaling_factor=1.5),
        seed=201,
    ),
    FixtureSpec(
        name="v2_group_limited",
        family="v2",
        covers="V2 group_limited_greedy (group score = max softmax score), topk_group < n_group",
        config=v2(
            n_routed_experts=12,
            num_experts_per_tok=3,
            n_group=4,
            topk_group=2,
            topk_method="group_limited_greedy",
            routed_scaling_factor=2.0,
        ),
        seed=202,
    ),
    FixtureSpec(
        name="v2_lite_no_qlora",
        family="v2",
        covers="V2-Lite style: q_lora_rank null (single q_proj), greedy, YaRN with "
        "mscale = mscale_all_dim = 0.707, legacy rope_scaling/rope_theta keys in config.json",
        config=v2(
            q_lora_rank=None,
            max_position_embeddings=64,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 10000.0,
                "factor": 4.0,
                "original_max_position_embeddings": 16,
                "mscale": 0.707,
                "mscale_all_dim": 0.707,
                "beta_fast": 32,
                "beta_slow": 1,
            },
        ),
        seed=203,
        prompt_length=20,
        legacy_rope_keys=True,
    ),
]


def build_model(spec: FixtureSpec) -> torch.nn.Module:
    """Build the randomly initialised float32 model of a fixture with eager attention."""
    if spec.family == "v3":
        config = DeepseekV3Config(**spec.config)
        model_class = DeepseekV3ForCausalLM
    else:
        config = DeepseekV2Config(**spec.config)
        model_class = DeepseekV2ForCausalLM
    config._attn_implementation = "eager"
    torch.manual_seed(spec.seed)
    return model_class(config).eval()


@torch.no_grad()
def perturb_weights(model: torch.nn.Module, spec: FixtureSpec, generator: torch.Generator) -> None:
    """Overwrite every weight with seeded random values of useful scale.

    The transformers init (std 0.02, norms exactly 1, zero bias) makes attention nearly
    uniform and the MoE branch negligible, so a wrong engine could still match. Instead,
    matrices get std 1/sqrt(fan_in), norms 1 + 0.1 * N(0, 1) and the V3 correction bias
    the spec's distribution.
    """
    hidden_size = model.config.hidden_size
    for name, param in model.named_parameters():
        if name.endswith("embed_tokens.weight"):
            # A tied embedding doubles as the head, so it gets the head's scale.
            std = 1.0 / math.sqrt(hidden_size) if model.config.tie_word_embeddings else 1.0
            param.copy_(torch.randn(param.shape, generator=generator) * std)
        elif "norm" in name:
            param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
        elif param.ndim >= 2:
            fan_in = param.shape[-1]
            param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(fan_in))
        else:
            raise ValueError(f"no perturbation rule for parameter {name} with shape {tuple(param.shape)}")

    for name, buffer in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            values = spec.bias_mean + spec.bias_std * torch.randn(buffer.shape, generator=generator)
            buffer.copy_(values)


def save_fixture(model: torch.nn.Module, spec: FixtureSpec, directory: Path) -> None:
    """Save the model with save_pretrained, then make config.json state the routing.

    For a non-float32 fixture a cast copy is saved, so the caller's model stays float32.
    """
    if spec.save_dtype != torch.float32:
        original_buffers = dict(model.named_buffers())
        model = copy.deepcopy(model).to(spec.save_dtype)
        # DeepSeek-V3 checkpoints store the correction bias in F32 next to BF16 weights, so
        # the bias is restored from the float32 model rather than upcast from its BF16 copy.
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.data = original_buffers[name].detach().clone()

    save_kwargs: dict[str, Any] = {}
    if spec.max_shard_size is not None:
        save_kwargs["max_shard_size"] = spec.max_shard_size
    model.save_pretrained(directory, **save_kwargs)

    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    for key in ("scoring_func", "topk_method"):
        if config.get(key) != spec.config[key]:
            logger.warning(
                "%s: save_pretrained wrote %s=%r, setting it to %r", spec.name, key, config.get(key), spec.config[key]
            )
            config[key] = spec.config[key]
    if spec.legacy_rope_keys:
        rope = dict(config.pop("rope_parameters"))
        config["rope_theta"] = rope.pop("rope_theta")
        rope_type = rope.pop("rope_type")
        rope.pop("type", None)
        config["rope_scaling"] = {"type": rope_type, **rope}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_fixture_model(spec: FixtureSpec, directory: Path) -> torch.nn.Module:
    """Load a saved fixture in float32 with eager attention, upcasting BF16 weights exactly."""
    model_class = DeepseekV3ForCausalLM if spec.family == "v3" else DeepseekV2ForCausalLM
    model = model_class.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager")
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and tensor.dtype != torch.float32:
            raise RuntimeError(f"{spec.name}: {name} loaded as {tensor.dtype}, expected float32")
    return model.eval()


class RouterRecorder:
    """Forward hooks that record the input and the chosen experts of every MoE router."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.routers: list[tuple[int, torch.nn.Module]] = []
        self.inputs: dict[int, torch.Tensor] = {}
        self.indices: dict[int, torch.Tensor] = {}
        self.handles = []
        for layer_index, layer in enumerate(model.model.layers):
            # Dense MLP layers have gate_proj but no router called gate.
            gate = getattr(layer.mlp, "gate", None)
            if gate is None:
                continue
            self.routers.append((layer_index, gate))
            self.handles.append(gate.register_forward_hook(self._make_hook(layer_index)))

    def _make_hook(self, layer_index: int):
        def hook(module, args, output):
            self.inputs[layer_index] = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            self.indices[layer_index] = output[2].detach()

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def select_experts(
    router_logits: torch.Tensor,
    bias: torch.Tensor | None,
    config: Any,
    scoring: str,
    group_score: str,
    fill_value: float,
    use_groups: bool = True,
) -> tuple[torch.Tensor, float]:
    """Re-derive the top-k expert choice of a router and the smallest decision margin.

    The margin is the gap between the last kept and the first rejected score, taken over the
    group choice (when groups are used) and the expert choice, minimised over tokens.
    """
    if scoring == "sigmoid":
        scores = router_logits.sigmoid()
    else:
        scores = router_logits.softmax(dim=-1)
    choice = scores + bias if bias is not None else scores.clone()

    num_tokens, num_experts = choice.shape
    top_k = config.num_experts_per_tok
    margins: list[float] = []

    num_groups = config.n_group or 1
    if use_groups and num_groups > 1 and config.topk_group < num_groups:
        grouped = choice.view(num_tokens, num_groups, num_experts // num_groups)
        if group_score == "top2_sum":
            per_group = grouped.topk(2, dim=-1).values.sum(dim=-1)
        elif group_score == "max":
            per_group = grouped.max(dim=-1).values
        else:
            raise ValueError(f"unknown group score {group_score!r}")
        ranked = per_group.sort(dim=-1, descending=True).values
        margins.append(float((ranked[:, config.topk_group - 1] - ranked[:, config.topk_group]).min()))
        kept_groups = per_group.topk(config.topk_group, dim=-1).indices
        group_mask = torch.zeros_like(per_group, dtype=torch.bool).scatter_(1, kept_groups, True)
        expert_mask = group_mask.repeat_interleave(num_experts // num_groups, dim=1)
        choice = choice.masked_fill(~expert_mask, fill_value)

    ranked = choice.sort(dim=-1, descending=True).values
    if top_k < num_experts:
        gap = ranked[:, top_k - 1] - ranked[:, top_k]
        margins.append(float(gap.min()))
    chosen = choice.topk(top_k, dim=-1).indices.sort(dim=-1).values
    return chosen, min(margins) if margins else math.inf


def analyse_routing(model: torch.nn.Module, recorder: RouterRecorder, spec: FixtureSpec) -> dict[str, Any]:
    """Check the recorded routing against a re-derivation and count what each rule changes.

    Each count is the number of routed tokens that pick a different expert set when one
    detail of the rule is done differently. A non-zero count shows that the fixture exercises
    that detail.
    """
    config = model.config
    scoring = "sigmoid" if spec.family == "v3" else "softmax"
    reference_fill = -math.inf if spec.family == "v3" else 0.0
    group_score = "top2_sum" if spec.family == "v3" else "max"
    use_groups = spec.family == "v3" or config.topk_method == "group_limited_greedy"

    groups_limit_choice = (config.n_group or 1) > 1 and config.topk_group < config.n_group
    variants: dict[str, dict[str, Any]] = {}
    if spec.family == "v3":
        variants["without correction bias"] = {"drop_bias": True}
    if use_groups and groups_limit_choice:
        variants["without group limit"] = {"use_groups": False}
        if spec.family == "v3":
            variants["excluded groups filled with 0.0"] = {"fill_value": 0.0}
            variants["group score = max instead of top-2 sum"] = {"group_score": "max"}

    changed = dict.fromkeys(variants, 0)
    routed_tokens = 0
    min_margin = math.inf
    for layer_index, gate in recorder.routers:
        hidden = recorder.inputs[layer_index]
        router_logits = hidden @ gate.weight.float().T
        bias = getattr(gate, "e_score_correction_bias", None)
        chosen, margin = select_experts(
            router_logits, bias, config, scoring, group_score, reference_fill, use_groups=use_groups
        )
        recorded = recorder.indices[layer_index].sort(dim=-1).values
        if not torch.equal(chosen, recorded):
            raise RuntimeError(f"{spec.name}: layer {layer_index} routing re-derivation disagrees with transformers")
        min_margin = min(min_margin, margin)
        routed_tokens += hidden.shape[0]

        for label, variant in variants.items():
            alternative, _ = select_experts(
                router_logits,
                None if variant.get("drop_bias") else bias,
                config,
                scoring,
                variant.get("group_score", group_score),
                variant.get("fill_value", reference_fill),
                use_groups=variant.get("use_groups", use_groups),
            )
            changed[label] += int((alternative != chosen).any(dim=-1).sum())

    return {"routed_tokens": routed_tokens, "min_margin": min_margin, "changed": changed}


@torch.no_grad()
def compute_references(
    model: torch.nn.Module, spec: FixtureSpec, generator: torch.Generator
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Draw a prompt and compute its logits and greedy continuation with transformers.

    Prompts are re-drawn until the continuation contains no special token and no logit or
    routing decision is a near-tie, so that an engine that stops at eos still emits all
    GREEDY_TOKENS tokens and fp32 rounding cannot flip a decision.
    """
    config = model.config
    special_ids = {config.bos_token_id, config.eos_token_id, config.pad_token_id} - {None}
    allowed_ids = torch.tensor([token for token in range(config.vocab_size) if token not in special_ids])
    recorder = RouterRecorder(model)
    try:
        for attempt in range(1, MAX_PROMPT_ATTEMPTS + 1):
            picks = torch.randint(len(allowed_ids), (spec.prompt_length,), generator=generator)
            prompt = allowed_ids[picks].unsqueeze(0)

            logits = model(prompt, use_cache=False).logits[0]

            # eos_token_id=None as a keyword disables stopping. A GenerationConfig with
            # eos_token_id=None would fall back to the model's generation_config instead.
            generated = model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                do_sample=False,
                max_new_tokens=GREEDY_TOKENS,
                eos_token_id=None,
                output_logits=True,
                return_dict_in_generate=True,
            )
            greedy_ids = generated.sequences[0, spec.prompt_length :]
            if greedy_ids.shape[0] != GREEDY_TOKENS:
                raise RuntimeError(
                    f"{spec.name}: generate returned {greedy_ids.shape[0]} tokens, expected {GREEDY_TOKENS}"
                )
            greedy_logits = torch.cat(generated.logits, dim=0)
            if not torch.equal(greedy_logits.argmax(dim=-1), greedy_ids):
                raise RuntimeError(f"{spec.name}: generate chose tokens that are not the argmax of its logits")

            # A full forward without cache over prompt + continuation checks the cached decode
            # path and records every routing decision for the margin check.
            full_sequence = generated.sequences
            full_logits = model(full_sequence, use_cache=False).logits[0]
            teacher_logits = full_logits[spec.prompt_length - 1 : -1]
            if not torch.equal(teacher_logits.argmax(dim=-1), greedy_ids):
                raise RuntimeError(f"{spec.name}: cached greedy decoding disagrees with a full forward")
            top2 = teacher_logits.topk(2, dim=-1).values
            greedy_margin = float((top2[:, 0] - top2[:, 1]).min())
            routing = analyse_routing(model, recorder, spec)

            has_special = any(int(token) in special_ids for token in greedy_ids)
            if has_special or greedy_margin < GREEDY_MIN_MARGIN or routing["min_margin"] < ROUTING_MIN_MARGIN:
                logger.info(
                    "%s: prompt attempt %d rejected (special token: %s, greedy margin %.2e, routing margin %.2e)",
                    spec.name,
                    attempt,
                    has_special,
                    greedy_margin,
                    routing["min_margin"],
                )
                continue

            cache_error = float((greedy_logits - teacher_logits).abs().max())
            arrays = {
                "prompt_ids": prompt[0].numpy().astype(np.int64),
                "logits": logits.numpy().astype(np.float32),
                "greedy_ids": greedy_ids.numpy().astype(np.int64),
                "greedy_logits": greedy_logits.numpy().astype(np.float32),
            }
            info = {
                "attempts": attempt,
                "greedy_margin": greedy_margin,
                "cache_max_abs_diff": cache_error,
                "routing": routing,
            }
            return arrays, info
    finally:
        recorder.remove()
    raise RuntimeError(f"{spec.name}: no usable prompt in {MAX_PROMPT_ATTEMPTS} attempts; change the seed")


@torch.no_grad()
def check_round_trip(model: torch.nn.Module, reloaded: torch.nn.Module, spec: FixtureSpec) -> None:
    """Raise if the model loaded from disk is not the saved one, rounded to the saved dtype.

    This also covers config.json rewrites such as the legacy RoPE keys.
    """
    saved_tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    for name, tensor in [*reloaded.named_parameters(), *reloaded.named_buffers()]:
        expected = saved_tensors[name]
        if name.endswith("e_score_correction_bias") or "rotary_emb" in name:
            rounded = expected
        else:
            rounded = expected.to(spec.save_dtype).float()
        if not torch.equal(tensor, rounded):
            raise RuntimeError(f"{spec.name}: {name} differs after saving and reloading")

    if spec.save_dtype == torch.float32:
        probe = torch.arange(2, 2 + spec.prompt_length).unsqueeze(0) % model.config.vocab_size
        before = model(probe, use_cache=False).logits
        after = reloaded(probe, use_cache=False).logits
        if not torch.equal(before, after):
            raise RuntimeError(f"{spec.name}: reloaded model computes different logits from the saved one")


def make_fixture(spec: FixtureSpec, out_dir: Path) -> dict[str, Any]:
    """Build, save, reload and record one fixture, and return its summary for the README."""
    directory = out_dir / spec.name
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)

    generator = torch.Generator().manual_seed(spec.seed)
    model = build_model(spec)
    perturb_weights(model, spec, generator)
    save_fixture(model, spec, directory)

    reloaded = load_fixture_model(spec, directory)
    check_round_trip(model, reloaded, spec)

    arrays, info = compute_references(reloaded, spec, generator)
    np.savez(directory / "reference.npz", **arrays)

    routing = info["routing"]
    logger.info(
        "%s: prompt after %d attempt(s), greedy margin %.3g, routing margin %.3g, cache vs full forward %.2e",
        spec.name,
        info["attempts"],
        info["greedy_margin"],
        routing["min_margin"],
        info["cache_max_abs_diff"],
    )
    for label, count in routing["changed"].items():
        logger.info("%s: %d of %d routed tokens change experts %s", spec.name, count, routing["routed_tokens"], label)
    return {"spec": spec, "info": info, "config": json.loads((directory / "config.json").read_text())}


def describe_config(spec: FixtureSpec, config: dict[str, Any]) -> str:
    """Summarise the config values and the correction bias that distinguish fixtures."""
    parts = [
        config["model_type"],
        f"L={config['num_hidden_layers']}",
        f"dense={config['first_k_dense_replace']}",
        f"q_lora={config['q_lora_rank']}",
        f"E={config['n_routed_experts']}",
        f"K={config['num_experts_per_tok']}",
        f"shared={config['n_shared_experts']}",
        f"groups={config['n_group']}/{config['topk_group']}",
        f"{config['scoring_func']}/{config['topk_method']}",
        f"norm_topk={str(config['norm_topk_prob']).lower()}",
        f"scale={config['routed_scaling_factor']}",
    ]
    rope = config.get("rope_parameters") or config.get("rope_scaling")
    if rope and rope.get("rope_type", rope.get("type")) == "yarn":
        parts.append(
            f"yarn factor={rope['factor']} orig={rope['original_max_position_embeddings']} "
            f"mscale={rope['mscale']} mscale_all_dim={rope['mscale_all_dim']} "
            f"beta_fast={rope['beta_fast']} beta_slow={rope['beta_slow']} "
            f"theta={config.get('rope_theta', rope.get('rope_theta'))}"
        )
    if config["model_type"] == "deepseek_v3":
        parts.append(f"bias={spec.bias_mean:g}+{spec.bias_std:g}*N(0,1)")
    if config.get("tie_word_embeddings"):
        parts.append("tied")
    if config.get("dtype") != "float32":
        parts.append(f"dtype={config.get('dtype')}")
    return ", ".join(parts)


# Config keys that no fixture overrides, listed once in the README.
SHARED_DIM_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_attention_heads",
    "kv_lora_rank",
    "qk_nope_head_dim",
    "qk_rope_head_dim",
    "v_head_dim",
    "intermediate_size",
    "moe_intermediate_size",
    "rms_norm_eps",
)


def format_size(num_bytes: int) -> str:
    return f"{num_bytes / 1024:.0f} KiB" if num_bytes >= 1024 else f"{num_bytes} B"


def write_readme(out_dir: Path, summaries: list[dict[str, Any]]) -> int:
    """Write tests/fixtures/README.md and return the total size of all fixture files."""
    for summary in summaries:
        for key in SHARED_DIM_KEYS:
            if summary["config"][key] != BASE_CONFIG[key]:
                raise ValueError(f"{summary['spec'].name} overrides {key}, which the README lists as shared")

    rows = []
    routing_rows = []
    total_bytes = 0
    for summary in summaries:
        spec: FixtureSpec = summary["spec"]
        directory = out_dir / spec.name
        files = sorted(path for path in directory.iterdir() if path.is_file())
        weight_bytes = sum(path.stat().st_size for path in files if path.suffix == ".safetensors")
        shard_count = sum(1 for path in files if path.suffix == ".safetensors")
        npz_bytes = (directory / "reference.npz").stat().st_size
        fixture_bytes = sum(path.stat().st_size for path in files)
        total_bytes += fixture_bytes
        weights = format_size(weight_bytes) + (f" in {shard_count} shards" if shard_count > 1 else "")
        rows.append(
            f"| `{spec.name}` | {spec.covers} | {describe_config(spec, summary['config'])} | "
            f"{weights} | {format_size(npz_bytes)} | {format_size(fixture_bytes)} |"
        )
        routing = summary["info"]["routing"]
        changed = "; ".join(f"{label}: {count}" for label, count in routing["changed"].items()) or "-"
        routing_rows.append(
            f"| `{spec.name}` | {spec.prompt_length} | {summary['info']['greedy_margin']:.3g} | "
            f"{routing['min_margin']:.3g} | {routing['routed_tokens']} | {changed} |"
        )

    text = README_TEMPLATE.format(
        transformers_version=transformers.__version__,
        torch_version=torch.__version__.split("+")[0],
        greedy_tokens=GREEDY_TOKENS,
        greedy_min_margin=GREEDY_MIN_MARGIN,
        routing_min_margin=ROUTING_MIN_MARGIN,
        shared_dims=", ".join(f"`{key}` {BASE_CONFIG[key]}" for key in SHARED_DIM_KEYS),
        fixture_rows="\n".join(rows),
        routing_rows="\n".join(routing_rows),
        total_size=format_size(total_bytes),
    )
    (out_dir / "README.md").write_text(text)
    return total_bytes


README_TEMPLATE = """\
# Reference fixtures

Tiny random DeepSeek-V2/V3 models saved by Hugging Face transformers, with outputs that
transformers computed for them. The engine's tests load each directory like a real
checkpoint and compare their outputs with `reference.npz`; they do not need torch.

Regenerate with `python tools/make_reference.py` (needs the `ref` extra: torch and
transformers). These files were made with transformers {transformers_version} and
torch {torch_version} on CPU. Seeds are fixed, but another torch or transformers version
may produce different bytes.

## Contents of a fixture directory

- `config.json`, `generation_config.json`: as written by `save_pretrained`, see the
  config notes below.
- `model.safetensors`, or `model-0000N-of-0000M.safetensors` shards with
  `model.safetensors.index.json`. Routed experts are stored per expert
  (`model.layers.L.mlp.experts.E.{{gate,up,down}}_proj.weight`), which is what
  `save_pretrained` writes by default.
- `reference.npz`:
  - `prompt_ids` int64 `[T]`: random ids that avoid bos, eos and pad.
  - `logits` float32 `[T, vocab]`: one forward over the prompt without a KV cache.
  - `greedy_ids` int64 `[{greedy_tokens}]`: `generate(do_sample=False, max_new_tokens={greedy_tokens})`
    with the default dynamic KV cache.
  - `greedy_logits` float32 `[{greedy_tokens}, vocab]`: the logits that chose each greedy token
    (row i picks `greedy_ids[i]`), for checking the decode path numerically.

All references come from the model reloaded from these files in float32 with eager
attention, so an fp32 engine should match `logits` and `greedy_logits` to about 1e-4
absolute. `v3_bf16` is no exception: BF16 weights are upcast to float32 before the
forward, as an engine that upcasts on load does.

## Fixtures

Config shorthand: L layers, dense = `first_k_dense_replace`, E routed experts, K experts
per token, groups = `n_group`/`topk_group`, scale = `routed_scaling_factor`, bias = the
distribution of the V3 `e_score_correction_bias`. Every fixture has {shared_dims}.
Sizes are of the files on disk.

| fixture | covers | config | weights | reference.npz | total |
|---|---|---|---|---|---|
{fixture_rows}

Total size of all fixtures: {total_size}.

## How the weights were made

The transformers init (std 0.02, norms exactly 1, zero correction bias) leaves attention
nearly uniform and the MoE branch negligible. The script therefore overwrites every weight
from a seeded generator. Embeddings are N(0, 1), or std 1/sqrt(hidden_size) when tied to
the head. Every matrix is N(0, 1) / sqrt(fan_in) and every RMSNorm weight 1 + 0.1 N(0, 1).
The V3 `e_score_correction_bias` follows the distribution listed in the table. In
`v3_sigmoid_groups` it is centred below zero so that many biased scores are negative.

## Generation settings

`generate` runs with `eos_token_id=None`, which disables stopping. The prompt is also
re-drawn until the continuation contains no bos or eos, so an engine that stops at eos
still produces all {greedy_tokens} tokens. The configs keep `bos_token_id` 0 and
`eos_token_id` 1. The same re-draw rejects prompts with near-ties. Every greedy step has a
top-1 minus top-2 logit gap of at least {greedy_min_margin}. Every routing choice, of groups
and of experts, over the prompt and the continuation has a gap of at least
{routing_min_margin} between the last kept and the first rejected score.

The table shows the smallest gaps, and how many of the routed tokens (tokens x MoE
layers, over prompt and continuation) would select a different expert set if one detail of
the routing rule were done differently. A non-zero count means the fixture catches an
engine that gets that detail wrong.

| fixture | T | min greedy gap | min routing gap | routed tokens | tokens with a different expert set |
|---|---|---|---|---|---|
{routing_rows}

## Config notes

- V3 configs carry `"scoring_func": "sigmoid"` and `"topk_method": "noaux_tc"`, V2 configs
  `"scoring_func": "softmax"`. The transformers config classes do not declare these keys
  (V2 declares `topk_method`), but they are written to config.json because the script
  passes them when building the config. Transformers' V3 router hard-codes sigmoid scoring
  with bias-corrected group routing, and its V2 router hard-codes softmax.
- V2 configs set `norm_topk_prob` false, because transformers' V2 router never renormalises.
- V3 configs set `num_nextn_predict_layers` 0. `save_pretrained` writes no MTP layer
  weights, and DeepseekV3Config's default of 1 would announce a layer that is not there.
- `num_key_value_heads` equals `num_attention_heads`. MLA does not use it, but
  transformers divides by it and DeepseekV3Config defaults it to 128.
- `head_dim` in config.json equals `qk_rope_head_dim` and `qk_head_dim` equals
  `qk_nope_head_dim + qk_rope_head_dim`: transformers derives both and writes them back.
- RoPE is stored as `rope_parameters` with `rope_theta` inside, as transformers 5 writes
  it. `v2_lite_no_qlora` instead uses the keys of hub checkpoints made before
  transformers 5: a top-level `rope_theta` and `rope_scaling` with `"type": "yarn"`. The
  script checks that transformers reloads it to the same model.
- V3 configs have `"rope_interleave": true`, the DeepseekV3Config default.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "tests" / "fixtures",
        help="directory that receives one subdirectory per fixture and README.md (default: tests/fixtures)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logger.info("transformers %s, torch %s", transformers.__version__, torch.__version__)

    args.out.mkdir(parents=True, exist_ok=True)
    summaries = [make_fixture(spec, args.out) for spec in FIXTURES]
    total_bytes = write_readme(args.out, summaries)
    print(f"wrote {len(summaries)} fixtures ({format_size(total_bytes)}) to {args.out}")


if __name__ == "__main__":
    main()
