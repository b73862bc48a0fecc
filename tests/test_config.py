"""config.json parsing: V2/V3 keys and defaults, and a ConfigError naming the key for bad values."""

import json

import pytest

from minillm.config import ModelConfig
from minillm.errors import ConfigError

from helpers import TINY_V3


def test_v3_routing_defaults_when_keys_absent():
    raw = {k: v for k, v in TINY_V3.items() if k not in ("scoring_func", "topk_method", "norm_topk_prob")}
    config = ModelConfig.from_dict(raw)
    assert (config.scoring_func, config.topk_method, config.norm_topk_prob) == ("sigmoid", "noaux_tc", True)


def test_v2_lite_style_config():
    config = ModelConfig.from_dict({**TINY_V3, "model_type": "deepseek_v2", "q_lora_rank": None,
                                    "scoring_func": "softmax", "topk_method": "greedy", "n_group": 1,
                                    "topk_group": 1, "norm_topk_prob": False})
    assert config.q_lora_rank is None
    assert not config.uses_correction_bias


def test_rope_parameters_spelling():
    raw = {k: v for k, v in TINY_V3.items() if k not in ("rope_scaling", "rope_theta")}
    raw["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 5000.0, "factor": 2.0,
                              "original_max_position_embeddings": 64, "mscale_all_dim": 1.0}
    config = ModelConfig.from_dict(raw)
    assert config.rope.theta == 5000.0
    assert config.rope.factor == 2.0


def test_layer_kinds():
    config = ModelConfig.from_dict({**TINY_V3, "num_hidden_layers": 5, "first_k_dense_replace": 2})
    assert [config.is_moe_layer(i) for i in range(5)] == [False, False, True, True, True]
    assert config.latent_dim == 32 + 8


@pytest.mark.parametrize("key, value, message", [
    ("model_type", "llama", "unsupported model_type 'llama'"),
    ("hidden_size", -4, "hidden_size=-4"),
    ("hidden_size", "64", "hidden_size='64'"),
    ("scoring_func", "softplus", "scoring_func='softplus'"),
    ("topk_method", "random", "topk_method='random'"),
    ("n_group", 3, "n_group=3"),
    ("topk_group", 5, "topk_group=5"),
    ("num_experts_per_tok", 9, "num_experts_per_tok=9"),
    ("qk_rope_head_dim", 7, "qk_rope_head_dim=7"),
    ("tie_word_embeddings", "yes", "tie_word_embeddings='yes'"),
    ("rope_scaling", {"type": "dynamic", "factor": 2.0}, "unsupported rope type 'dynamic'"),
    ("rope_scaling", {"type": "yarn", "factor": 2.0}, "original_max_position_embeddings"),
])
def test_invalid_value_names_key(key, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        ModelConfig.from_dict({**TINY_V3, key: value})


def test_missing_required_key():
    raw = dict(TINY_V3)
    del raw["kv_lora_rank"]
    with pytest.raises(ConfigError, match="missing the required key 'kv_lora_rank'"):
        ModelConfig.from_dict(raw)


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        ModelConfig.from_file(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        ModelConfig.from_file(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match="must hold a JSON object"):
        ModelConfig.from_file(tmp_path)
