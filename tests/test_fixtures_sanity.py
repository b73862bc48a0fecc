"""Consistency checks of the reference fixtures in tests/fixtures, without torch.

These tests check that each fixture directory contains the config, weights and references that
tools/make_reference.py promises, so an engine test that fails on a fixture can be trusted
to point at the engine.
"""

import json
import struct
from pathlib import Path

import numpy as np
import pytest

FIXTURES_DIR = Path(__file__).parent / "fixtures"
FIXTURE_DIRS = sorted(path.parent for path in FIXTURES_DIR.glob("*/config.json"))
GREEDY_TOKENS = 32


def read_safetensors_header(path: Path) -> dict:
    """Return the tensor entries (dtype, shape, data_offsets) of a safetensors file."""
    with path.open("rb") as file:
        (header_length,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(header_length))
    header.pop("__metadata__", None)
    return header


def read_f32_tensor(directory: Path, entry: dict) -> np.ndarray:
    """Read one F32 tensor described by an entry of read_all_tensor_entries."""
    path = directory / entry["file"]
    with path.open("rb") as file:
        (header_length,) = struct.unpack("<Q", file.read(8))
        start, end = entry["data_offsets"]
        file.seek(8 + header_length + start)
        data = file.read(end - start)
    return np.frombuffer(data, dtype="<f4").reshape(entry["shape"])


def read_all_tensor_entries(directory: Path) -> dict[str, dict]:
    """Collect the tensor entries of a fixture, single-file or sharded."""
    entries = {}
    for path in sorted(directory.glob("*.safetensors")):
        for name, entry in read_safetensors_header(path).items():
            assert name not in entries, f"{name} is stored in more than one shard"
            entries[name] = {**entry, "file": path.name}
    return entries


def expected_shapes(config: dict) -> dict[str, list[int]]:
    """Return the tensor names and shapes that save_pretrained writes for a config."""
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    nope = config["qk_nope_head_dim"]
    rope = config["qk_rope_head_dim"]
    value = config["v_head_dim"]
    kv_rank = config["kv_lora_rank"]
    q_rank = config["q_lora_rank"]
    experts = config["n_routed_experts"]
    expert_width = config["moe_intermediate_size"]
    shared_width = expert_width * config["n_shared_experts"]

    shapes = {
        "model.embed_tokens.weight": [config["vocab_size"], hidden],
        "model.norm.weight": [hidden],
    }
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = [config["vocab_size"], hidden]

    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}"
        shapes[f"{prefix}.input_layernorm.weight"] = [hidden]
        shapes[f"{prefix}.post_attention_layernorm.weight"] = [hidden]
        attention = f"{prefix}.self_attn"
        if q_rank is None:
            shapes[f"{attention}.q_proj.weight"] = [heads * (nope + rope), hidden]
        else:
            shapes[f"{attention}.q_a_proj.weight"] = [q_rank, hidden]
            shapes[f"{attention}.q_a_layernorm.weight"] = [q_rank]
            shapes[f"{attention}.q_b_proj.weight"] = [heads * (nope + rope), q_rank]
        shapes[f"{attention}.kv_a_proj_with_mqa.weight"] = [kv_rank + rope, hidden]
        shapes[f"{attention}.kv_a_layernorm.weight"] = [kv_rank]
        shapes[f"{attention}.kv_b_proj.weight"] = [heads * (nope + value), kv_rank]
        shapes[f"{attention}.o_proj.weight"] = [hidden, heads * value]

        mlp = f"{prefix}.mlp"
        if layer < config["first_k_dense_replace"]:
            width = config["intermediate_size"]
            shapes[f"{mlp}.gate_proj.weight"] = [width, hidden]
            shapes[f"{mlp}.up_proj.weight"] = [width, hidden]
            shapes[f"{mlp}.down_proj.weight"] = [hidden, width]
            continue
        shapes[f"{mlp}.gate.weight"] = [experts, hidden]
        if config["model_type"] == "deepseek_v3":
            shapes[f"{mlp}.gate.e_score_correction_bias"] = [experts]
        for expert in range(experts):
            shapes[f"{mlp}.experts.{expert}.gate_proj.weight"] = [expert_width, hidden]
            shapes[f"{mlp}.experts.{expert}.up_proj.weight"] = [expert_width, hidden]
            shapes[f"{mlp}.experts.{expert}.down_proj.weight"] = [hidden, expert_width]
        shapes[f"{mlp}.shared_experts.gate_proj.weight"] = [shared_width, hidden]
        shapes[f"{mlp}.shared_experts.up_proj.weight"] = [shared_width, hidden]
        shapes[f"{mlp}.shared_experts.down_proj.weight"] = [hidden, shared_width]
    return shapes


def load_config(directory: Path) -> dict:
    return json.loads((directory / "config.json").read_text())


def fixture_id(directory: Path) -> str:
    return directory.name


def test_fixtures_present():
    assert len(FIXTURE_DIRS) >= 9, f"expected the generated fixtures in {FIXTURES_DIR}"


@pytest.mark.parametrize("directory", FIXTURE_DIRS, ids=fixture_id)
def test_config_states_routing(directory):
    config = load_config(directory)
    if config["model_type"] == "deepseek_v3":
        assert config["architectures"] == ["DeepseekV3ForCausalLM"]
        assert config["scoring_func"] == "sigmoid"
        assert config["topk_method"] == "noaux_tc"
        assert config["num_nextn_predict_layers"] == 0
    else:
        assert config["model_type"] == "deepseek_v2"
        assert config["architectures"] == ["DeepseekV2ForCausalLM"]
        assert config["scoring_func"] == "softmax"
        assert config["topk_method"] in ("greedy", "group_limited_greedy")
        assert config["norm_topk_prob"] is False
    assert ("rope_parameters" in config) != ("rope_scaling" in config)


@pytest.mark.parametrize("directory", FIXTURE_DIRS, ids=fixture_id)
def test_weights_match_config(directory):
    config = load_config(directory)
    entries = read_all_tensor_entries(directory)

    expected = expected_shapes(config)
    assert sorted(entries) == sorted(expected)
    for name, shape in expected.items():
        assert entries[name]["shape"] == shape, name


@pytest.mark.parametrize("directory", FIXTURE_DIRS, ids=fixture_id)
def test_weight_dtypes(directory):
    config = load_config(directory)
    entries = read_all_tensor_entries(directory)

    weight_dtype = {"float32": "F32", "bfloat16": "BF16"}[config["dtype"]]
    for name, entry in entries.items():
        if name.endswith("e_score_correction_bias"):
            assert entry["dtype"] == "F32", name
        else:
            assert entry["dtype"] == weight_dtype, name


@pytest.mark.parametrize("directory", FIXTURE_DIRS, ids=fixture_id)
def test_correction_bias_full_precision(directory):
    entries = read_all_tensor_entries(directory)
    biases = [entry for name, entry in entries.items() if name.endswith("e_score_correction_bias")]
    if load_config(directory)["model_type"] != "deepseek_v3":
        assert biases == []
        return

    assert biases
    for entry in biases:
        bias = read_f32_tensor(directory, entry)
        # Values rounded through BF16 have zero low mantissa bits.
        assert (bias.view(np.uint32) & 0xFFFF).any()
        assert (bias < 0).any()
        assert (bias != 0).all()


@pytest.mark.parametrize("directory", FIXTURE_DIRS, ids=fixture_id)
def test_shard_index_complete(directory):
    index_path = directory / "model.safetensors.index.json"
    shards = sorted(directory.glob("*.safetensors"))
    if not index_path.exists():
        assert [path.name for path in shards] == ["model.safetensors"]
        return

    weight_map = json.loads(index_path.read_text())["weight_map"]
    entries = read_all_tensor_entries(directory)
    assert len(shards) > 1
    assert sorted(weight_map) == sorted(entries)
    for name, entry in entries.items():
        assert weight_map[name] == entry["file"], name


@pytest.mark.parametrize("directory", FIXTURE_DIRS, ids=fixture_id)
def test_reference_arrays(directory):
    config = load_config(directory)
    reference = np.load(directory / "reference.npz")
    vocab_size = config["vocab_size"]
    special_ids = {config["bos_token_id"], config["eos_token_id"]}

    prompt_ids = reference["prompt_ids"]
    assert prompt_ids.dtype == np.int64
    assert prompt_ids.ndim == 1
    assert 12 <= prompt_ids.shape[0] <= 20
    assert prompt_ids.min() >= 0
    assert prompt_ids.max() < vocab_size
    assert not special_ids & set(prompt_ids.tolist())

    logits = reference["logits"]
    assert logits.dtype == np.float32
    assert logits.shape == (prompt_ids.shape[0], vocab_size)
    assert np.isfinite(logits).all()

    greedy_ids = reference["greedy_ids"]
    assert greedy_ids.dtype == np.int64
    assert greedy_ids.shape == (GREEDY_TOKENS,)
    assert not special_ids & set(greedy_ids.tolist())

    greedy_logits = reference["greedy_logits"]
    assert greedy_logits.dtype == np.float32
    assert greedy_logits.shape == (GREEDY_TOKENS, vocab_size)
    np.testing.assert_array_equal(greedy_logits.argmax(axis=-1), greedy_ids)
    # generate's prefill and the uncached forward both compute the logits of the last
    # prompt position, which choose the first greedy token.
    np.testing.assert_allclose(greedy_logits[0], logits[-1], rtol=0, atol=1e-4)


def rope_settings(directory: Path) -> dict:
    config = load_config(directory)
    return config.get("rope_parameters") or config["rope_scaling"]


YARN_DIRS = [
    directory
    for directory in FIXTURE_DIRS
    if rope_settings(directory).get("rope_type", rope_settings(directory).get("type")) == "yarn"
]


def test_yarn_fixtures_present():
    assert len(YARN_DIRS) >= 2


@pytest.mark.parametrize("directory", YARN_DIRS, ids=fixture_id)
def test_yarn_prompt_passes_original_length(directory):
    rope = rope_settings(directory)

    prompt_length = np.load(directory / "reference.npz")["prompt_ids"].shape[0]
    assert prompt_length > rope["original_max_position_embeddings"]
    assert rope["mscale_all_dim"] > 0
