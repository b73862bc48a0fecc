"""Published model configs for the KV calculator, trimmed to the keys that size the KV cache.

Each preset copies its values from the model's config.json on the Hugging Face hub, named in
`source`. Keys and values are as in that file, so a preset goes through the same reader as a
checkpoint's config.json.

NOTE: the values were checked against public verbatim copies of these config.json files and
against transformers' config classes for the same model_type, not fetched from the hub itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from minillm.errors import ConfigError
from minillm.kvcalc.config_reader import spec_from_config
from minillm.kvcalc.spec import ModelSpec


@dataclass(frozen=True, slots=True)
class Preset:
    """A published model config: its display name, its source and the keys the calculator reads."""

    title: str
    source: str
    config: dict[str, Any] = field(repr=False)

    def spec(self) -> ModelSpec:
        return spec_from_config(self.config, name=self.title, source=self.source)


PRESETS: dict[str, Preset] = {
    # 61 layers: compress_ratios [128, 128] + [4, 128] * 29 + [4], i.e. 31 HCA and 30 CSA layers.
    # The 62nd compress_ratios entry (0) belongs to the MTP module.
    "deepseek-v4-pro": Preset(
        title="DeepSeek-V4-Pro",
        source="https://huggingface.co/deepseek-ai/DeepSeek-V4-Pro/blob/main/config.json",
        config={
            "model_type": "deepseek_v4", "hidden_size": 7168, "num_hidden_layers": 61,
            "num_attention_heads": 128, "num_key_value_heads": 1, "head_dim": 512, "qk_rope_head_dim": 64,
            "sliding_window": 128, "index_n_heads": 64, "index_head_dim": 128, "index_topk": 1024,
            "compress_ratios": [128, 128] + [4, 128] * 29 + [4, 0],
            "max_position_embeddings": 1048576,
        },
    ),
    # 43 layers: compress_ratios [0, 0] + [4, 128] * 20 + [4], i.e. 2 sliding, 21 CSA and 20 HCA layers.
    # The 44th compress_ratios entry (0) belongs to the MTP module.
    "deepseek-v4-flash": Preset(
        title="DeepSeek-V4-Flash",
        source="https://huggingface.co/deepseek-ai/DeepSeek-V4-Flash/blob/main/config.json",
        config={
            "model_type": "deepseek_v4", "hidden_size": 4096, "num_hidden_layers": 43,
            "num_attention_heads": 64, "num_key_value_heads": 1, "head_dim": 512, "qk_rope_head_dim": 64,
            "sliding_window": 128, "index_n_heads": 64, "index_head_dim": 128, "index_topk": 512,
            "compress_ratios": [0, 0] + [4, 128] * 20 + [4, 0],
            "max_position_embeddings": 1048576,
        },
    ),
    # DeepSeek-V3.2-Exp added the DSA indexer to DeepSeek-V3's MLA; this preset uses its config.json.
    "deepseek-v3.2": Preset(
        title="DeepSeek-V3.2-Exp",
        source="https://huggingface.co/deepseek-ai/DeepSeek-V3.2-Exp/blob/main/config.json",
        config={
            "model_type": "deepseek_v32", "hidden_size": 7168, "num_hidden_layers": 61,
            "num_attention_heads": 128, "kv_lora_rank": 512, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
            "v_head_dim": 128, "index_n_heads": 64, "index_head_dim": 128, "index_topk": 2048,
            "max_position_embeddings": 163840,
        },
    ),
    "deepseek-v3": Preset(
        title="DeepSeek-V3",
        source="https://huggingface.co/deepseek-ai/DeepSeek-V3/blob/main/config.json",
        config={
            "model_type": "deepseek_v3", "hidden_size": 7168, "num_hidden_layers": 61,
            "num_attention_heads": 128, "kv_lora_rank": 512, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
            "v_head_dim": 128, "max_position_embeddings": 163840,
        },
    ),
    "deepseek-v2": Preset(
        title="DeepSeek-V2",
        source="https://huggingface.co/deepseek-ai/DeepSeek-V2/blob/main/config.json",
        config={
            "model_type": "deepseek_v2", "hidden_size": 5120, "num_hidden_layers": 60,
            "num_attention_heads": 128, "kv_lora_rank": 512, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
            "v_head_dim": 128, "max_position_embeddings": 163840,
        },
    ),
    # 78 layers, every one with its own indexer; the MTP layer (num_nextn_predict_layers 1) is extra.
    "glm-5": Preset(
        title="GLM-5",
        source="https://huggingface.co/zai-org/GLM-5/blob/main/config.json",
        config={
            "model_type": "glm_moe_dsa", "hidden_size": 6144, "num_hidden_layers": 78,
            "num_attention_heads": 64, "kv_lora_rank": 512, "qk_rope_head_dim": 64, "qk_nope_head_dim": 192,
            "v_head_dim": 256, "index_n_heads": 32, "index_head_dim": 128, "index_topk": 2048,
            "max_position_embeddings": 202752,
        },
    ),
    "qwen3-235b-a22b": Preset(
        title="Qwen3-235B-A22B",
        source="https://huggingface.co/Qwen/Qwen3-235B-A22B/blob/main/config.json",
        config={
            "model_type": "qwen3_moe", "hidden_size": 4096, "num_hidden_layers": 94,
            "num_attention_heads": 64, "num_key_value_heads": 4, "head_dim": 128,
            "use_sliding_window": False, "sliding_window": None, "max_window_layers": 94,
            "max_position_embeddings": 40960,
        },
    ),
    # config.json has no head_dim, so it is hidden_size / num_attention_heads = 128.
    "llama-3.1-70b": Preset(
        title="Llama-3.1-70B",
        source="https://huggingface.co/meta-llama/Llama-3.1-70B/blob/main/config.json",
        config={
            "model_type": "llama", "hidden_size": 8192, "num_hidden_layers": 80,
            "num_attention_heads": 64, "num_key_value_heads": 8,
            "max_position_embeddings": 131072,
        },
    ),
}


def get_preset(name: str) -> Preset:
    """Return the preset called `name` (case-insensitive), or raise ConfigError listing the names."""
    preset = PRESETS.get(name.strip().lower())
    if preset is None:
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return preset
