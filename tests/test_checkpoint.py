"""Loading weights: dtypes, shards, FP8 blocks, and one clear error for each kind of bad checkpoint."""

import json
import shutil
import struct

import numpy as np
import pytest

import minillm
from minillm.errors import CheckpointError
from minillm.io.safetensors import E4M3_TO_F32, Checkpoint, bf16_to_f32, dequantize_fp8_blocks, f32_to_bf16, save_file

from helpers import TINY_V3, random_tensors, write_checkpoint


def test_e4m3_table_known_values():
    assert E4M3_TO_F32[0x38] == 1.0
    assert E4M3_TO_F32[0x7E] == 448.0
    assert E4M3_TO_F32[0x01] == 2.0**-9
    assert E4M3_TO_F32[0xB8] == -1.0
    assert np.isnan(E4M3_TO_F32[0x7F])
    assert np.isnan(E4M3_TO_F32[0xFF])


def test_bf16_round_trip_rounds_to_nearest_even():
    values = np.array([1.0, 1.00390625, 1.01171875, -2.5, 3.0e38], dtype=np.float32)
    back = bf16_to_f32(f32_to_bf16(values))
    # 1 + 2^-8 is a tie: rounds to the even neighbour 1.0; 1 + 3 * 2^-8 rounds up to 1 + 2^-6
    np.testing.assert_array_equal(back[:4], [1.0, 1.0, 1.015625, -2.5])
    assert abs(back[4] - values[4]) / values[4] < 2**-8


def test_fp8_block_dequantization_with_partial_blocks():
    rng = np.random.default_rng(0)
    quantized = rng.integers(0, 0x7E, size=(130, 260), dtype=np.uint8)  # 2 x 3 blocks, the last ones partial
    scales = rng.uniform(0.5, 2.0, size=(2, 3)).astype(np.float32)
    weight = dequantize_fp8_blocks(quantized, scales)
    assert weight[129, 259] == E4M3_TO_F32[quantized[129, 259]] * scales[1, 2]
    assert weight[127, 128] == E4M3_TO_F32[quantized[127, 128]] * scales[0, 1]
    with pytest.raises(CheckpointError, match="does not fit weight shape"):
        dequantize_fp8_blocks(quantized, scales[:1])


def test_fp8_checkpoint_loads_dequantized(tmp_path):
    tensors = random_tensors(TINY_V3)
    name = "model.layers.0.self_attn.kv_b_proj.weight"
    rng = np.random.default_rng(1)
    tensors[name] = rng.integers(0, 0x7E, size=tensors[name].shape, dtype=np.uint8)
    tensors[name + "_scale_inv"] = np.array([[0.25]], dtype=np.float32)
    write_checkpoint(tmp_path, tensors=tensors, dtypes={name: "F8_E4M3"})
    model = minillm.load(tmp_path)
    np.testing.assert_array_equal(model.transformer.weights.layers[0].attention.kv_b,
                                  E4M3_TO_F32[tensors[name]] * 0.25)


def test_bf16_checkpoint_loads_exactly(tmp_path):
    tensors = random_tensors(TINY_V3)
    write_checkpoint(tmp_path, tensors=tensors, dtypes={n: "BF16" for n in tensors})
    model = minillm.load(tmp_path)
    expected = bf16_to_f32(f32_to_bf16(tensors["model.embed_tokens.weight"]))
    np.testing.assert_array_equal(model.transformer.weights.embed, expected)


def test_sharded_checkpoint_equals_single_file(tmp_path, tiny_model_dir):
    tensors = random_tensors(TINY_V3)
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2 :]}
    for file, part in halves.items():
        save_file({n: tensors[n] for n in part}, tmp_path / file)
    index = {"metadata": {}, "weight_map": {n: f for f, part in halves.items() for n in part}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text(json.dumps(TINY_V3))
    sharded, single = minillm.load(tmp_path), minillm.load(tiny_model_dir)
    ids = [0, 5, 9, 200]
    np.testing.assert_array_equal(sharded.logits(ids), single.logits(ids))


def test_fused_expert_spelling_loads(tmp_path, tiny_model_dir):
    tensors = random_tensors(TINY_V3)
    for layer in (1, 2):
        p = f"model.layers.{layer}.mlp.experts"
        gate = [tensors.pop(f"{p}.{e}.gate_proj.weight") for e in range(8)]
        up = [tensors.pop(f"{p}.{e}.up_proj.weight") for e in range(8)]
        down = [tensors.pop(f"{p}.{e}.down_proj.weight") for e in range(8)]
        tensors[f"{p}.gate_up_proj"] = np.concatenate([np.stack(gate), np.stack(up)], axis=1)
        tensors[f"{p}.down_proj"] = np.stack(down)
    write_checkpoint(tmp_path, tensors=tensors)
    ids = [0, 5, 9, 200]
    np.testing.assert_array_equal(minillm.load(tmp_path).logits(ids), minillm.load(tiny_model_dir).logits(ids))


# --- bad checkpoints: each raises one CheckpointError whose message names the problem ---

def broken_copy(source, target):
    shutil.copytree(source, target)
    return target / "model.safetensors"


def test_truncated_file(tmp_path, tiny_model_dir):
    weights = broken_copy(tiny_model_dir, tmp_path / "m")
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        minillm.load(tmp_path / "m")


def test_file_shorter_than_header_length(tmp_path, tiny_model_dir):
    weights = broken_copy(tiny_model_dir, tmp_path / "m")
    weights.write_bytes(weights.read_bytes()[:5])
    with pytest.raises(CheckpointError, match="truncated"):
        minillm.load(tmp_path / "m")


def test_corrupt_header(tmp_path, tiny_model_dir):
    weights = broken_copy(tiny_model_dir, tmp_path / "m")
    data = bytearray(weights.read_bytes())
    data[8:16] = b"\xff\xfe garb"
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt header"):
        minillm.load(tmp_path / "m")


def test_huge_header_length(tmp_path, tiny_model_dir):
    weights = broken_copy(tiny_model_dir, tmp_path / "m")
    data = bytearray(weights.read_bytes())
    data[:8] = struct.pack("<Q", 2**60)
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="header length"):
        minillm.load(tmp_path / "m")


def test_inconsistent_byte_range(tmp_path):
    tensors = {"model.norm.weight": np.ones(64, dtype=np.float32)}
    path = tmp_path / "model.safetensors"
    save_file(tensors, path)
    data = path.read_bytes().replace(b'"shape":[64]', b'"shape":[65]')
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="does not hold F32"):
        Checkpoint(tmp_path)


def test_missing_tensor(tmp_path):
    tensors = random_tensors(TINY_V3)
    del tensors["model.layers.1.mlp.experts.3.up_proj.weight"]
    write_checkpoint(tmp_path, tensors=tensors)
    with pytest.raises(CheckpointError, match=r"1 missing: model\.layers\.1\.mlp\.experts\.3\.up_proj\.weight"):
        minillm.load(tmp_path)


def test_unexpected_tensor(tmp_path):
    tensors = random_tensors(TINY_V3)
    tensors["model.layers.7.self_attn.extra.weight"] = np.zeros(3, dtype=np.float32)
    write_checkpoint(tmp_path, tensors=tensors)
    with pytest.raises(CheckpointError, match=r"1 unexpected: model\.layers\.7\.self_attn\.extra\.weight"):
        minillm.load(tmp_path)


def test_misshaped_tensor_names_both_shapes(tmp_path):
    tensors = random_tensors(TINY_V3)
    tensors["model.layers.0.self_attn.o_proj.weight"] = np.zeros((64, 32), dtype=np.float32)
    write_checkpoint(tmp_path, tensors=tensors)
    with pytest.raises(CheckpointError, match=r"o_proj\.weight: checkpoint \[64, 32\], config expects \[64, 64\]"):
        minillm.load(tmp_path)


def test_missing_shard(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY_V3))
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match="missing: model-00001-of-00002.safetensors"):
        minillm.load(tmp_path)


def test_no_weights_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY_V3))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        minillm.load(tmp_path)


def test_loading_leaves_files_unchanged(tmp_path, tiny_model_dir):
    shutil.copytree(tiny_model_dir, tmp_path / "m")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    minillm.load(tmp_path / "m").logits([0, 1, 2])
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before
