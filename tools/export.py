"""Export a trained DeepseekV3LM checkpoint to a Hugging Face model folder.

Usage::

    python tools/export.py --checkpoint runs/NAME/checkpoint.pt --tokenizer runs/NAME --out weights/NAME

The folder contains ``config.json`` (model_type deepseek_v3, every routing key written out),
``model.safetensors``, ``generation_config.json`` and the tokenizer files, and loads in
transformers' DeepseekV3ForCausalLM. The MTP module is stored as layer ``num_hidden_layers``,
the layout of DeepSeek-V3's released weights: ``enorm``, ``hnorm``, ``eh_proj``, the decoder
block's tensors, ``shared_head.norm`` and copies of the embedding (``embed_tokens``) and of
``lm_head`` (``shared_head.head``).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.torch_model import DeepseekV3LM, ModelConfig  # noqa: E402

logger = logging.getLogger(__name__)

# Budget for model.safetensors: the default model is committed to the repository.
DEFAULT_SIZE_LIMIT_BYTES = 48 * 1000 * 1000
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# Tensors kept in float32 whatever the export dtype: they are small, and the router's
# expert choice is sensitive to rounding of its inputs.
_FLOAT32_SUFFIXES = ("norm.weight", "e_score_correction_bias", "mlp.gate.weight")


def hf_config(config: ModelConfig, dtype: torch.dtype) -> dict:
    """Return the ``config.json`` dict for ``config`` in DeepseekV3Config's key names."""
    return {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "moe_intermediate_size": config.moe_intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_attention_heads,
        "q_lora_rank": config.q_lora_rank,
        "kv_lora_rank": config.kv_lora_rank,
        "qk_nope_head_dim": config.qk_nope_head_dim,
        "qk_rope_head_dim": config.qk_rope_head_dim,
        "v_head_dim": config.v_head_dim,
        "n_routed_experts": config.n_routed_experts,
        "n_shared_experts": config.n_shared_experts,
        "num_experts_per_tok": config.num_experts_per_tok,
        "n_group": config.n_group,
        "topk_group": config.topk_group,
        "routed_scaling_factor": config.routed_scaling_factor,
        "norm_topk_prob": config.norm_topk_prob,
        "scoring_func": "sigmoid",
        "topk_method": "noaux_tc",
        "first_k_dense_replace": config.first_k_dense_replace,
        "moe_layer_freq": 1,
        "num_nextn_predict_layers": config.num_nextn_predict_layers,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "max_position_embeddings": config.max_position_embeddings,
        "rope_scaling": dict(config.rope_scaling) if config.rope_scaling else None,
        "rope_interleave": True,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": None,
        "tie_word_embeddings": False,
        "initializer_range": config.initializer_range,
        "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
        **({"engram": dict(config.engram)} if config.engram else {}),
    }


def generation_config(config: ModelConfig) -> dict:
    return {
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "do_sample": True,
        "temperature": 0.8,
        "top_p": 0.95,
    }


def hf_state_dict(model: DeepseekV3LM) -> dict[str, torch.Tensor]:
    """Return the model's tensors under their Hugging Face checkpoint names, MTP included."""
    state = model.state_dict()
    num_layers = model.config.num_hidden_layers
    tensors: dict[str, torch.Tensor] = {}

    for name, tensor in state.items():
        if not name.startswith("mtp."):
            tensors[name] = tensor
            continue

        _, depth, rest = name.split(".", 2)
        prefix = f"model.layers.{num_layers + int(depth)}."
        if rest.startswith("block."):
            rest = rest.removeprefix("block.")
        elif rest.startswith("shared_head_norm."):
            rest = "shared_head.norm." + rest.removeprefix("shared_head_norm.")
        tensors[prefix + rest] = tensor

    for depth in range(len(model.mtp)):
        prefix = f"model.layers.{num_layers + depth}."
        tensors[prefix + "embed_tokens.weight"] = state["model.embed_tokens.weight"]
        tensors[prefix + "shared_head.head.weight"] = state["lm_head.weight"]
    return tensors


def _storage_dtype(tensor: torch.Tensor, name: str, dtype: torch.dtype) -> torch.dtype:
    if not tensor.is_floating_point():
        return tensor.dtype  # Engram's token map, multipliers and table sizes stay int64
    return torch.float32 if name.endswith(_FLOAT32_SUFFIXES) else dtype


def export_model(
    model: DeepseekV3LM,
    tokenizer_dir: Path,
    out_dir: Path,
    dtype: torch.dtype = torch.bfloat16,
    size_limit_bytes: int | None = DEFAULT_SIZE_LIMIT_BYTES,
    extra_files: dict[str, Path] | None = None,
) -> Path:
    """Write ``model`` as a Hugging Face folder to ``out_dir`` and return the safetensors path.

    Raises ValueError if model.safetensors exceeds ``size_limit_bytes`` (None disables the
    check); the folder is still written so it can be inspected.
    """
    out_dir.mkdir(parents=True, exist_ok=True)

    tensors = {
        name: tensor.detach().to("cpu", _storage_dtype(tensor, name, dtype)).contiguous().clone()
        for name, tensor in hf_state_dict(model).items()
    }
    weights_path = out_dir / "model.safetensors"
    save_file(tensors, str(weights_path), metadata={"format": "pt"})

    _write_json(out_dir / "config.json", hf_config(model.config, dtype))
    _write_json(out_dir / "generation_config.json", generation_config(model.config))
    for file_name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / file_name, out_dir / file_name)
    for target_name, source in (extra_files or {}).items():
        shutil.copyfile(source, out_dir / target_name)

    size = weights_path.stat().st_size
    logger.info("exported %d tensors (%.1f MB) to %s", len(tensors), size / 1e6, out_dir)
    if size_limit_bytes is not None and size > size_limit_bytes:
        raise ValueError(
            f"{weights_path} is {size} bytes, over the {size_limit_bytes}-byte limit; "
            "reduce vocab_size, hidden_size or the number of experts"
        )
    return weights_path


def _write_json(path: Path, content: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(content, handle, indent=2)
        handle.write("\n")


def load_checkpoint_model(checkpoint_path: Path) -> DeepseekV3LM:
    """Rebuild a DeepseekV3LM from a checkpoint written by tools/train.py."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    model = DeepseekV3LM(ModelConfig(**checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint.pt written by tools/train.py")
    parser.add_argument("--tokenizer", type=Path, required=True, help="folder with tokenizer.json and tokenizer_config.json")
    parser.add_argument("--out", type=Path, required=True, help="output model folder, e.g. weights/minillm-tiny")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16", help="storage dtype of weights")
    parser.add_argument(
        "--size-limit-mb", type=float, default=DEFAULT_SIZE_LIMIT_BYTES / 1e6, help="maximum model.safetensors size (MB)"
    )
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    model = load_checkpoint_model(args.checkpoint)
    export_model(
        model,
        args.tokenizer,
        args.out,
        dtype=getattr(torch, args.dtype),
        size_limit_bytes=int(args.size_limit_mb * 1e6),
    )


if __name__ == "__main__":
    main()
