"""Builders for tiny random checkpoints and tokenizers, written with NumPy alone (no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from minillm.config import ModelConfig
from minillm.io.safetensors import save_file
from minillm.io.weights import expected_shapes

TINY_V3 = {
    "model_type": "deepseek_v3",
    "architectures": ["DeepseekV3ForCausalLM"],
    "vocab_size": 320,
    "hidden_size": 64,
    "intermediate_size": 96,
    "moe_intermediate_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "q_lora_rank": 48,
    "kv_lora_rank": 32,
    "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 8,
    "v_head_dim": 16,
    "n_routed_experts": 8,
    "n_shared_experts": 1,
    "num_experts_per_tok": 2,
    "n_group": 4,
    "topk_group": 2,
    "scoring_func": "sigmoid",
    "topk_method": "noaux_tc",
    "norm_topk_prob": True,
    "routed_scaling_factor": 2.5,
    "first_k_dense_replace": 1,
    "moe_layer_freq": 1,
    "num_nextn_predict_layers": 0,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 512,
    "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                     "mscale": 1.0, "mscale_all_dim": 0.7, "beta_fast": 32, "beta_slow": 1},
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "bos_token_id": 0,
    "eos_token_id": 1,
}


def random_tensors(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights of the right shapes: norms near 1, matrices small, biases that matter."""
    cfg = ModelConfig.from_dict(config)
    shapes, _ = expected_shapes(cfg, set(), mtp_modules=cfg.num_nextn_predict_layers)
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in sorted(shapes.items()):
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            tensors[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        elif name.endswith("e_score_correction_bias"):
            tensors[name] = (0.2 * rng.standard_normal(shape)).astype(np.float32)
        else:
            tensors[name] = (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)
    return tensors


def write_checkpoint(directory: Path, config: dict | None = None, seed: int = 0,
                     tensors: dict[str, np.ndarray] | None = None, dtypes: dict[str, str] | None = None) -> Path:
    config = dict(TINY_V3 if config is None else config)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    save_file(tensors if tensors is not None else random_tensors(config, seed), directory / "model.safetensors", dtypes)
    return directory


def write_tokenizer(directory: Path, vocab_size: int = 320) -> None:
    """Train a byte-level BPE on a small text with multi-byte characters; BOS id 0, EOS id 1."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|bos|>", "<|eos|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = ["Once upon a time there was a little fox who lived in the woods.",
            "The fox said: \"Hello, friend!\" and the owl answered.", "Café, naïve, 東京, emoji 🦊 🦉."] * 20
    tokenizer.train_from_iterator(text, trainer)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "add_bos_token": True, "tokenizer_class": "PreTrainedTokenizerFast"}))
