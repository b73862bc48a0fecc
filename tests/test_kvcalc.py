"""The KV cache calculator: published figures, config reading, context parsing, the CLI, and a
check against the bytes the engine's own cache allocates per token."""

import json
import subprocess
import sys

import numpy as np
import pytest

import minillm
from helpers import TINY_V3, write_checkpoint
from minillm.cli import main
from minillm.config import ModelConfig
from minillm.errors import ConfigError
from minillm.kvcalc import (GIB, PRESETS, KVCalcError, kv_baselines, kv_cache_size, parse_token_count,
                            spec_from_config)
from minillm.kvcalc.formulas import gqa_layer, mha_layer, mla_layer

MILLION = 10**6


def by_type(report):
    return {usage.layer_type: usage for usage in report.layer_types}


# Published long-context figures: 8-bit KV values, 16-bit indexer keys, 1M = 10^6 tokens, GiB = 2^30 bytes.
@pytest.mark.parametrize("preset, gib", [
    ("deepseek-v4-pro", 5.48),
    ("glm-5", 60.44),
    ("qwen3-235b-a22b", 89.65),
])
def test_long_context_figures(preset, gib):
    report = kv_cache_size(preset, MILLION, kv_bytes=1, indexer_bytes=2)
    assert round(report.total_gib, 2) == gib


def test_v4_pro_breakdown():
    report = kv_cache_size("deepseek-v4-pro", MILLION, kv_bytes=1, indexer_bytes=2)
    usage = by_type(report)
    assert usage["csa"].layers == 30
    assert usage["hca"].layers == 31
    window = 128 * 512  # the last 128 tokens, one 512-value entry each
    assert usage["csa"].total_bytes == 30 * (MILLION // 4 * (512 + 128 * 2) + window)
    assert usage["hca"].total_bytes == 31 * (MILLION // 128 * 512 + window)
    assert report.total_bytes == 5_887_989_760


def test_v4_flash_layer_counts():
    usage = by_type(kv_cache_size("deepseek-v4-flash", MILLION))
    assert usage["sliding"].layers == 2
    assert usage["csa"].layers == 21
    assert usage["hca"].layers == 20
    assert usage["sliding"].total_bytes == 2 * 128 * 512


def test_glm5_and_qwen3_bytes_per_token():
    assert kv_cache_size("glm-5", MILLION).bytes_per_token == 78 * (576 + 128 * 2)
    assert kv_cache_size("qwen3-235b-a22b", MILLION).bytes_per_token == 94 * 2 * 4 * 128


def test_deepseek_v3_mla_bf16():
    # 61 layers x (512 latent + 64 RoPE key) x 2 bytes
    report = kv_cache_size("deepseek-v3", 4096, kv_bytes=2)
    assert report.bytes_per_token == 70_272
    assert by_type(report)["mla"].layers == 61


def test_llama_31_70b_gqa_bf16():
    # 80 layers x 8 KV heads x 128 x 2 (K and V) x 2 bytes
    report = kv_cache_size("llama-3.1-70b", 4096, kv_bytes=2)
    assert report.bytes_per_token == 327_680
    assert by_type(report)["gqa"].layers == 80


def test_v32_adds_indexer_keys_to_v3():
    v3 = kv_cache_size("deepseek-v3", MILLION)
    v32 = kv_cache_size("deepseek-v3.2", MILLION)
    assert v32.bytes_per_token - v3.bytes_per_token == 61 * 128 * 2
    assert round(v32.total_gib, 2) == 47.27


def test_mla_matches_v2_paper_table():
    # DeepSeek-V2 paper (arXiv:2405.04434), Table 1: per token and layer MHA caches 2 n_h d_h
    # elements and MLA (d_c + d_h^R) = 9/2 d_h, with n_h = 128, d_h = 128, d_c = 4 d_h, d_h^R = d_h / 2,
    # "equal to GQA with only 2.25 groups".
    mla = mla_layer(kv_lora_rank=512, rope_head_dim=64).kv_values
    mha = mha_layer(heads=128, key_head_dim=128, value_head_dim=128).kv_values
    assert mla == 9 * 128 // 2
    assert mla == 2 * 2.25 * 128
    assert mha / mla == pytest.approx(2 * 128 / 4.5)
    assert gqa_layer(kv_heads=2, key_head_dim=128, value_head_dim=128).kv_values < mla
    assert gqa_layer(kv_heads=3, key_head_dim=128, value_head_dim=128).kv_values > mla


def test_baselines_use_model_head_sizes():
    # MLA heads have 192-value keys (128 no-RoPE + 64 RoPE) and 128-value values.
    baselines = kv_baselines("deepseek-v2", kv_bytes=2)
    assert baselines.mha_bytes_per_token == 60 * 128 * (192 + 128) * 2
    assert baselines.gqa_bytes_per_token == 60 * 8 * (192 + 128) * 2
    assert baselines.gqa_kv_heads == 8
    assert kv_cache_size("deepseek-v2", 1000, kv_bytes=2).baselines == baselines


def test_baselines_reject_bad_head_count():
    with pytest.raises(KVCalcError, match="invalid gqa_kv_heads 0"):
        kv_baselines("deepseek-v3", gqa_kv_heads=0)


def test_gqa_baseline_matches_llama():
    report = kv_cache_size("llama-3.1-70b", 1000, kv_bytes=2)
    assert report.baselines.gqa_bytes_per_token == report.bytes_per_token


def test_short_context_window_and_partial_groups():
    usage = by_type(kv_cache_size("deepseek-v4-pro", 100))
    # 100 tokens: 25 complete groups of 4, no complete group of 128, and the window contains all 100
    assert usage["csa"].total_bytes == 30 * (25 * (512 + 256) + 100 * 512)
    assert usage["hca"].total_bytes == 31 * 100 * 512


def test_sub_byte_precisions():
    assert kv_cache_size("deepseek-v3", 1000, kv_bytes=0.5).bytes_per_token == 61 * 576 / 2
    with pytest.raises(KVCalcError, match="kv_bytes 0.1"):
        kv_cache_size("deepseek-v3", 1000, kv_bytes=0.1)
    with pytest.raises(KVCalcError, match="indexer_bytes 0"):
        kv_cache_size("deepseek-v3", 1000, indexer_bytes=0)


def test_api_accepts_numpy_context():
    assert kv_cache_size("deepseek-v3", np.int64(10)).context_tokens == 10


@pytest.mark.parametrize("tokens", [0, -1, 1.5, True, "1M"])
def test_api_rejects_bad_context(tokens):
    with pytest.raises(KVCalcError, match="invalid context length"):
        kv_cache_size("deepseek-v3", tokens)


@pytest.mark.parametrize("text, tokens", [
    ("1M", 1_000_000), ("1m", 1_000_000), ("128k", 128_000), ("128K", 128_000), ("1048576", 1_048_576),
    ("32768", 32_768), ("1Mi", 1_048_576), ("128Ki", 131_072), ("128ki", 131_072), ("1.5M", 1_500_000),
    (" 2k ", 2_000), ("1", 1),
])
def test_parse_context(text, tokens):
    assert parse_token_count(text) == tokens


@pytest.mark.parametrize("text", ["0", "-5", "abc", "1.5x", "1.5", "", "0.0001k", "1e6", "k", "1 M tokens"])
def test_parse_context_rejects(text):
    with pytest.raises(KVCalcError, match="invalid context length"):
        parse_token_count(text)


# config.json reading

def test_unknown_model_type():
    with pytest.raises(ConfigError) as info:
        spec_from_config({"model_type": "gpt2", "num_hidden_layers": 12})
    assert "'gpt2'" in str(info.value)
    assert "deepseek_v3" in str(info.value)
    assert "qwen3_moe" in str(info.value)


def test_missing_key_names_it():
    config = {key: value for key, value in PRESETS["deepseek-v3"].config.items() if key != "kv_lora_rank"}
    with pytest.raises(ConfigError, match="missing the required key 'kv_lora_rank'"):
        spec_from_config(config)


def test_llama_without_gqa_is_mha():
    config = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32}
    report = kv_cache_size(config, 1000, kv_bytes=2)
    assert [u.layer_type for u in report.layer_types] == ["mha"]
    assert report.bytes_per_token == 32 * 2 * 4096 * 2


def test_qwen_sliding_layers():
    config = {"model_type": "qwen2", "hidden_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 8,
              "num_key_value_heads": 2, "use_sliding_window": True, "sliding_window": 16, "max_window_layers": 3}
    usage = by_type(kv_cache_size(config, 1000, kv_bytes=1))
    per_token = 2 * 2 * 128
    assert usage["gqa"].layers == 3
    assert usage["sliding"].layers == 1
    assert usage["sliding"].total_bytes == 16 * per_token
    assert usage["gqa"].total_bytes == 3 * 1000 * per_token


def test_qwen_window_off_by_default():
    config = {"model_type": "qwen3", "hidden_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 8,
              "num_key_value_heads": 2, "head_dim": 128, "use_sliding_window": False, "sliding_window": 16}
    assert [u.layer_type for u in kv_cache_size(config, 1000).layer_types] == ["gqa"]


def test_explicit_layer_types():
    config = {"model_type": "mistral", "hidden_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 1, "sliding_window": 8, "layer_types": ["full_attention", "sliding_attention"]}
    usage = by_type(kv_cache_size(config, 100))
    assert usage["gqa"].total_bytes == 100 * 2 * 128
    assert usage["sliding"].total_bytes == 8 * 2 * 128


def test_mistral_window_on_every_layer():
    config = {"model_type": "mistral", "hidden_size": 512, "num_hidden_layers": 3, "num_attention_heads": 4,
              "num_key_value_heads": 1, "sliding_window": 8}
    assert by_type(kv_cache_size(config, 100))["sliding"].layers == 3


def test_glm_shared_indexer_layers():
    config = dict(PRESETS["glm-5"].config, num_hidden_layers=4, indexer_types=["full", "shared", "shared", "full"])
    usage = by_type(kv_cache_size(config, 1000))
    assert usage["mla_dsa"].layers == 2
    assert usage["mla"].layers == 2
    assert usage["mla"].bytes_per_token == 2 * 576


def test_glm_indexer_pattern_string():
    config = dict(PRESETS["glm-5"].config, num_hidden_layers=3, index_topk_pattern="FSF")
    assert by_type(kv_cache_size(config, 1000))["mla"].layers == 1


def test_glm_bad_indexer_types():
    config = dict(PRESETS["glm-5"].config, num_hidden_layers=2, indexer_types=["full"])
    with pytest.raises(ConfigError, match="indexer_types"):
        spec_from_config(config)


def test_v4_layer_types_form():
    config = {key: value for key, value in PRESETS["deepseek-v4-flash"].config.items() if key != "compress_ratios"}
    config["layer_types"] = ["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"]
    config["num_hidden_layers"] = 3
    assert [u.layer_type for u in kv_cache_size(config, 1000).layer_types] == ["sliding", "csa", "hca"]


def test_v4_bad_compress_ratios():
    config = dict(PRESETS["deepseek-v4-pro"].config, compress_ratios=[128, 4])
    with pytest.raises(ConfigError, match="compress_ratios"):
        spec_from_config(config)
    config = dict(PRESETS["deepseek-v4-pro"].config, compress_ratios=[16] * 62)
    with pytest.raises(ConfigError, match="each 0, 4 or 128"):
        spec_from_config(config)
    config = {key: value for key, value in PRESETS["deepseek-v4-pro"].config.items() if key != "compress_ratios"}
    with pytest.raises(ConfigError, match="needs compress_ratios"):
        spec_from_config(config)


def test_model_config_and_unknown_preset():
    report = kv_cache_size(ModelConfig.from_dict(TINY_V3), 10, kv_bytes=4)
    assert report.bytes_per_token == 3 * (32 + 8) * 4
    with pytest.raises(ConfigError, match="neither a preset nor an existing path"):
        kv_cache_size("deepseek-v9", 10)


# The engine: its latent cache stores float32 rows of kv_lora_rank + qk_rope_head_dim per token and layer.

def test_matches_engine_cache(tmp_path):
    directory = write_checkpoint(tmp_path / "tiny")
    model = minillm.load(directory)
    caches = model.new_caches(capacity=4)
    prompt = np.array([0, 5, 9, 17, 33, 2, 8])
    model.step(prompt, caches, absorbed=False)
    for token in (3, 11, 40):  # decode steps, which also grow the caches past their capacity
        model.step(np.array([token]), caches, absorbed=True)
    tokens = prompt.size + 3

    engine_bytes = sum(cache.nbytes for cache in caches)
    report = kv_cache_size(directory, tokens, kv_bytes=4)
    assert report.bytes_per_token == engine_bytes / tokens
    assert report.total_bytes == engine_bytes
    assert report.layers == len(caches)


def test_matches_memory_hierarchy_statistics(tmp_path):
    """Bytes per token the tiers account for KV pages, summed over hbm, dram and ssd."""
    directory = write_checkpoint(tmp_path / "tiny")
    page_tokens = 4
    model = minillm.load(directory, cache_dir=tmp_path / "cache", page_tokens=page_tokens, prefix_cache=False)
    snapshots = []
    list(model.generate_ids([0, 5, 9, 17, 33, 2, 8, 4], max_new_tokens=9, temperature=0, stop_at_eos=False,
                            on_snapshot=snapshots.append))
    last = snapshots[-1]
    kv_bytes = sum(tier["used_by_kind"]["kv"] for tier in last["tiers"].values())
    pages = sum(last["pages"].values())
    assert pages == len(last["page_map"]) == 4  # 8 prompt + 8 fed-back tokens in pages of 4
    report = kv_cache_size(directory, 1, kv_bytes=4)
    assert report.bytes_per_token == kv_bytes / (pages * page_tokens)


# The command line

def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "minillm.cli", "kv-calc", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_preset_text():
    result = run_cli("--preset", "deepseek-v4-pro", "--context", "1M")
    assert result.returncode == 0, result.stderr
    assert "5.48" in result.stdout
    assert "5,887,989,760" in result.stdout
    lines = result.stdout.splitlines()
    assert any(line.startswith("csa") and " 30 " in line for line in lines)
    assert any(line.startswith("hca") and " 31 " in line for line in lines)


def test_cli_json_schema():
    result = run_cli("--preset", "glm-5", "--context", "1M", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    expected = {"model": str, "model_type": str, "source": str, "context_tokens": int, "kv_bytes": float,
                "indexer_bytes": float, "layers": int, "total_bytes": int, "total_gib": float,
                "bytes_per_token": float, "max_position_embeddings": int, "layer_types": list, "baselines": dict}
    assert set(report) == set(expected)
    for key, kind in expected.items():
        assert isinstance(report[key], kind), key
    assert report["context_tokens"] == MILLION
    assert report["total_bytes"] == 64_896_000_000
    assert report["total_gib"] == pytest.approx(64_896_000_000 / GIB)
    assert report["source"].startswith("https://huggingface.co/zai-org/GLM-5")
    usage = report["layer_types"][0]
    assert set(usage) == {"layer_type", "description", "layers", "bytes_per_token", "total_bytes", "total_gib"}
    assert usage["layer_type"] == "mla_dsa"
    assert set(report["baselines"]) == {"mha_bytes_per_token", "gqa_bytes_per_token", "gqa_kv_heads"}


def test_cli_model_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY_V3))
    result = run_cli("--model", str(tmp_path), "--context", "128k", "--kv-bytes", "4", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model_type"] == "deepseek_v3"
    assert report["context_tokens"] == 128_000
    assert report["bytes_per_token"] == 3 * (32 + 8) * 4
    assert report["source"] == str(tmp_path / "config.json")


def test_cli_warns_past_max_positions(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY_V3))
    result = run_cli("--model", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "max_position_embeddings (512)" in result.stdout


def test_cli_all_presets():
    result = run_cli("--all-presets", "--context", "128k", "--json")
    assert result.returncode == 0, result.stderr
    reports = json.loads(result.stdout)
    assert [r["preset"] for r in reports] == list(PRESETS)
    assert {r["context_tokens"] for r in reports} == {128_000}
    table = run_cli("--all-presets")
    assert table.returncode == 0, table.stderr
    for name in PRESETS:
        assert name in table.stdout


@pytest.mark.parametrize("args, message", [
    (["--context", "0"], "invalid context length '0'"),
    (["--context", "-5"], "invalid context length '-5'"),
    (["--context", "abc"], "invalid context length 'abc'"),
    (["--context", "1.5x"], "invalid context length '1.5x'"),
    (["--kv-bytes", "0"], "invalid --kv-bytes '0'"),
    (["--kv-bytes", "abc"], "invalid --kv-bytes 'abc'"),
    (["--indexer-bytes", "-2"], "invalid --indexer-bytes '-2'"),
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--model", "/nonexistent/model"], "model directory not found: /nonexistent/model"),
    (["--preset", "glm-5", "--model", "/tmp"], "--model and --preset cannot be combined"),
])
def test_cli_bad_input_one_line(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("minillm: error: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_cli_missing_default_model(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "weights" / "minillm-tiny"
    monkeypatch.setattr(minillm, "DEFAULT_MODEL_DIR", missing)
    assert main(["kv-calc"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"minillm: error: default model directory not found: {missing}")
    assert "--preset" in error
    assert len(error.strip().splitlines()) == 1


def test_cli_help_states_convention():
    result = subprocess.run([sys.executable, "-m", "minillm.cli", "kv-calc", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "1M = 1,000,000" in " ".join(result.stdout.split())
    assert "2^30" in result.stdout
