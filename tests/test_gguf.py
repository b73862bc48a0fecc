"""GGUF export (tools/export_gguf.py) of the Engram-off baseline, and llama.cpp running the result.

Needs the `bench` extra: the export tests skip without the gguf package, and the comparison with
llama.cpp also skips without llama-cpp-python.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

import minillm  # noqa: E402
from minillm.io.safetensors import Checkpoint  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tools import export_gguf  # noqa: E402

BASELINE = REPO_ROOT / "weights" / "minillm-tiny-baseline"
ENGRAM_FIXTURE = Path(__file__).parent / "fixtures" / "torch" / "engram_small"
EXPORT_SCRIPT = REPO_ROOT / "tools" / "export_gguf.py"
PROMPTS = [
    "Once upon a time there was a little fox who lived at the edge of the forest.",
    "The old man walked slowly down to the river, carrying a basket of bread",
    "She opened the door and saw that the whole garden was covered in snow, and",
]
GREEDY_TOKENS = 32


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "baseline.gguf"
    export_gguf.export_gguf(BASELINE, path)
    return path


@pytest.fixture(scope="module")
def reader(exported):
    return gguf.GGUFReader(exported)


@pytest.fixture(scope="module")
def config() -> dict:
    return json.loads((BASELINE / "config.json").read_text())


def field(reader, key):
    return reader.fields[key].contents()


def expected_tensor_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """GGUF shapes (innermost dimension first) that llama.cpp's deepseek2 loader requires."""
    D, V, H = config["hidden_size"], config["vocab_size"], config["num_attention_heads"]
    Q, C = config["q_lora_rank"], config["kv_lora_rank"]
    N, R, Vh = config["qk_nope_head_dim"], config["qk_rope_head_dim"], config["v_head_dim"]
    F, Fe, E = config["intermediate_size"], config["moe_intermediate_size"], config["n_routed_experts"]
    shapes = {"token_embd.weight": (D, V), "output_norm.weight": (D,), "output.weight": (D, V)}
    for layer in range(config["num_hidden_layers"]):
        blk = f"blk.{layer}"
        shapes.update({
            f"{blk}.attn_norm.weight": (D,),
            f"{blk}.attn_q_a.weight": (D, Q),
            f"{blk}.attn_q_a_norm.weight": (Q,),
            f"{blk}.attn_q_b.weight": (Q, H * (N + R)),
            f"{blk}.attn_kv_a_mqa.weight": (D, C + R),
            f"{blk}.attn_kv_a_norm.weight": (C,),
            f"{blk}.attn_k_b.weight": (N, C, H),
            f"{blk}.attn_v_b.weight": (C, Vh, H),
            f"{blk}.attn_output.weight": (H * Vh, D),
            f"{blk}.ffn_norm.weight": (D,),
        })
        if layer < config["first_k_dense_replace"]:
            shapes.update({f"{blk}.ffn_gate.weight": (D, F), f"{blk}.ffn_up.weight": (D, F),
                           f"{blk}.ffn_down.weight": (F, D)})
        else:
            shapes.update({
                f"{blk}.ffn_gate_inp.weight": (D, E),
                f"{blk}.exp_probs_b.bias": (E,),
                f"{blk}.ffn_gate_exps.weight": (D, Fe, E),
                f"{blk}.ffn_up_exps.weight": (D, Fe, E),
                f"{blk}.ffn_down_exps.weight": (Fe, D, E),
                f"{blk}.ffn_gate_shexp.weight": (D, Fe),
                f"{blk}.ffn_up_shexp.weight": (D, Fe),
                f"{blk}.ffn_down_shexp.weight": (Fe, D),
            })
    return shapes


def run_export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXPORT_SCRIPT), *args], capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------- metadata and tensors


def test_gguf_architecture_and_attention_keys(reader, config):
    C, R = config["kv_lora_rank"], config["qk_rope_head_dim"]
    assert field(reader, "general.architecture") == "deepseek2"
    assert field(reader, "general.file_type") == gguf.LlamaFileType.ALL_F32
    assert field(reader, "deepseek2.block_count") == config["num_hidden_layers"]
    assert field(reader, "deepseek2.embedding_length") == config["hidden_size"]
    assert field(reader, "deepseek2.feed_forward_length") == config["intermediate_size"]
    assert field(reader, "deepseek2.attention.head_count") == config["num_attention_heads"]
    assert field(reader, "deepseek2.attention.head_count_kv") == 1
    assert field(reader, "deepseek2.attention.q_lora_rank") == config["q_lora_rank"]
    assert field(reader, "deepseek2.attention.kv_lora_rank") == C
    assert field(reader, "deepseek2.attention.key_length") == C + R
    assert field(reader, "deepseek2.attention.value_length") == C
    assert field(reader, "deepseek2.attention.key_length_mla") == config["qk_nope_head_dim"] + R
    assert field(reader, "deepseek2.attention.value_length_mla") == config["v_head_dim"]
    assert field(reader, "deepseek2.attention.layer_norm_rms_epsilon") == pytest.approx(config["rms_norm_eps"])


def test_gguf_rope_keys(reader, config):
    rope = config["rope_scaling"]
    assert field(reader, "deepseek2.rope.dimension_count") == config["qk_rope_head_dim"]
    assert field(reader, "deepseek2.rope.freq_base") == pytest.approx(config["rope_theta"])
    assert field(reader, "deepseek2.rope.scaling.type") == "yarn"
    assert field(reader, "deepseek2.rope.scaling.factor") == pytest.approx(rope["factor"])
    assert field(reader, "deepseek2.rope.scaling.original_context_length") == rope["original_max_position_embeddings"]
    # llama.cpp stores 0.1 * mscale_all_dim for deepseek2 and divides by 0.1 when loading
    assert field(reader, "deepseek2.rope.scaling.yarn_log_multiplier") == pytest.approx(0.1 * rope["mscale_all_dim"])


def test_gguf_moe_keys(reader, config):
    assert field(reader, "deepseek2.leading_dense_block_count") == config["first_k_dense_replace"]
    assert field(reader, "deepseek2.expert_count") == config["n_routed_experts"]
    assert field(reader, "deepseek2.expert_used_count") == config["num_experts_per_tok"]
    assert field(reader, "deepseek2.expert_shared_count") == config["n_shared_experts"]
    assert field(reader, "deepseek2.expert_feed_forward_length") == config["moe_intermediate_size"]
    assert field(reader, "deepseek2.expert_gating_func") == gguf.ExpertGatingFuncType.SIGMOID
    assert field(reader, "deepseek2.expert_weights_norm") is True
    assert field(reader, "deepseek2.expert_weights_scale") == pytest.approx(config["routed_scaling_factor"])
    assert field(reader, "deepseek2.expert_group_count") == config["n_group"]
    assert field(reader, "deepseek2.expert_group_used_count") == config["topk_group"]


def test_gguf_tokenizer_keys(reader, config):
    tokenizer = json.loads((BASELINE / "tokenizer.json").read_text())
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == "gpt-2"
    assert len(tokens) == config["vocab_size"]
    assert field(reader, "tokenizer.ggml.bos_token_id") == 0
    assert field(reader, "tokenizer.ggml.eos_token_id") == 1
    assert field(reader, "tokenizer.ggml.add_bos_token") is True
    assert tokens[:2] == ["<|bos|>", "<|eos|>"]
    assert types[:2] == [gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    for text, token_id in list(tokenizer["model"]["vocab"].items())[100:110]:
        assert tokens[token_id] == text
        assert types[token_id] == gguf.TokenType.NORMAL
    merges = field(reader, "tokenizer.ggml.merges")
    assert len(merges) == len(tokenizer["model"]["merges"])
    assert merges[0] == " ".join(tokenizer["model"]["merges"][0])


def test_gguf_tensor_names_and_shapes(reader, config):
    shapes = {tensor.name: tuple(int(n) for n in tensor.shape) for tensor in reader.tensors}
    expected = expected_tensor_shapes(config)
    assert sorted(set(expected) - set(shapes)) == []
    assert sorted(set(shapes) - set(expected)) == []  # no MTP layer, no unsplit attn_kv_b
    for name, shape in expected.items():
        assert shapes[name] == shape, name


def test_gguf_tensor_types(reader):
    for tensor in reader.tensors:
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32, tensor.name


def test_gguf_kv_b_split_per_head(reader, config):
    H, C = config["num_attention_heads"], config["kv_lora_rank"]
    N, Vh = config["qk_nope_head_dim"], config["v_head_dim"]
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    checkpoint = Checkpoint(BASELINE)
    try:
        for layer in (0, config["num_hidden_layers"] - 1):
            kv_b = checkpoint.tensor(f"model.layers.{layer}.self_attn.kv_b_proj.weight").reshape(H, N + Vh, C)
            k_b = np.asarray(tensors[f"blk.{layer}.attn_k_b.weight"].data)  # (H, C, N)
            v_b = np.asarray(tensors[f"blk.{layer}.attn_v_b.weight"].data)  # (H, Vh, C)
            for head in range(H):
                np.testing.assert_array_equal(k_b[head], kv_b[head, :N].T)
                np.testing.assert_array_equal(v_b[head], kv_b[head, N:])
    finally:
        checkpoint.close()


def test_gguf_experts_and_router(reader):
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    checkpoint = Checkpoint(BASELINE)
    try:
        layer, expert = 2, 5
        prefix = f"model.layers.{layer}.mlp"
        for projection, gguf_name in (("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps"),
                                      ("down_proj", "ffn_down_exps")):
            stacked = np.asarray(tensors[f"blk.{layer}.{gguf_name}.weight"].data)
            np.testing.assert_array_equal(stacked[expert], checkpoint.tensor(f"{prefix}.experts.{expert}.{projection}.weight"))
        np.testing.assert_array_equal(np.asarray(tensors[f"blk.{layer}.exp_probs_b.bias"].data),
                                      checkpoint.tensor(f"{prefix}.gate.e_score_correction_bias"))
        np.testing.assert_array_equal(np.asarray(tensors[f"blk.{layer}.ffn_gate_inp.weight"].data),
                                      checkpoint.tensor(f"{prefix}.gate.weight"))
        np.testing.assert_array_equal(np.asarray(tensors["output.weight"].data), checkpoint.tensor("lm_head.weight"))
    finally:
        checkpoint.close()


def test_gguf_bf16_keeps_router_f32(tmp_path):
    path = tmp_path / "baseline-bf16.gguf"
    export_gguf.export_gguf(BASELINE, path, outtype="bf16")
    reader = gguf.GGUFReader(path)
    types = {tensor.name: tensor.tensor_type for tensor in reader.tensors}
    assert field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_BF16
    assert types["blk.1.attn_q_b.weight"] == gguf.GGMLQuantizationType.BF16
    assert types["blk.1.ffn_gate_exps.weight"] == gguf.GGMLQuantizationType.BF16
    assert types["blk.1.ffn_gate_inp.weight"] == gguf.GGMLQuantizationType.F32
    assert types["blk.1.exp_probs_b.bias"] == gguf.GGMLQuantizationType.F32
    assert types["blk.1.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    embed = next(tensor for tensor in reader.tensors if tensor.name == "token_embd.weight")
    checkpoint = Checkpoint(BASELINE)
    try:
        # BF16 weights are stored bit for bit
        np.testing.assert_array_equal(np.asarray(embed.data).view(np.uint16).reshape(-1),
                                      checkpoint.raw("model.embed_tokens.weight").reshape(-1))
    finally:
        checkpoint.close()


# ---------------------------------------------------------------- rejected input


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_export_rejects_engram_checkpoint(tmp_path):
    out = tmp_path / "engram.gguf"
    result = run_export(str(ENGRAM_FIXTURE), str(out))
    assert_one_line_error(result, "engram", "llama.cpp has no counterpart", "weights/minillm-tiny-baseline")
    assert list(tmp_path.iterdir()) == []


def test_export_rejects_missing_directory(tmp_path):
    result = run_export(str(tmp_path / "nowhere"), str(tmp_path / "out.gguf"))
    assert_one_line_error(result, "checkpoint directory not found", "nowhere")
    assert list(tmp_path.iterdir()) == []


def test_export_rejects_directory_without_config(tmp_path):
    (tmp_path / "model").mkdir()
    result = run_export(str(tmp_path / "model"), str(tmp_path / "out.gguf"))
    assert_one_line_error(result, "config file not found")
    assert not (tmp_path / "out.gguf").exists()


def test_export_rejects_non_deepseek_config(tmp_path):
    model = tmp_path / "llama"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    result = run_export(str(model), str(tmp_path / "out.gguf"))
    assert_one_line_error(result, "unsupported model_type 'llama'")
    assert not (tmp_path / "out.gguf").exists()


def test_export_rejects_missing_output_directory(tmp_path):
    result = run_export(str(BASELINE), str(tmp_path / "missing" / "out.gguf"))
    assert_one_line_error(result, "output directory not found")


def test_export_rejects_unequal_yarn_mscale(tmp_path):
    model = tmp_path / "mscale"
    model.mkdir()
    raw = json.loads((BASELINE / "config.json").read_text())
    raw["rope_scaling"]["mscale"] = 0.707
    (model / "config.json").write_text(json.dumps(raw))
    with pytest.raises(export_gguf.ExportError, match="mscale=0.707 and mscale_all_dim=1.0"):
        export_gguf.export_gguf(model, tmp_path / "out.gguf")


def test_failed_export_leaves_no_file(tmp_path, monkeypatch):
    reads = []
    original = Checkpoint.tensor

    def fail_after_a_few_reads(self, name):
        reads.append(name)
        if len(reads) > 5:
            raise OSError("simulated read failure")
        return original(self, name)

    monkeypatch.setattr(Checkpoint, "tensor", fail_after_a_few_reads)
    with pytest.raises(OSError, match="simulated read failure"):
        export_gguf.export_gguf(BASELINE, tmp_path / "out.gguf")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- llama.cpp against minillm


def llama_cpp_greedy(llama_cpp, model, prompt_ids: list[int], count: int) -> list[int]:
    """Greedy tokens from llama.cpp, one decode call per token, argmax taken here."""
    model.reset()
    model.eval(prompt_ids)
    tokens = []
    for _ in range(count):
        token = int(np.argmax(model.scores[model.n_tokens - 1]))
        tokens.append(token)
        model.eval([token])
    return tokens


@pytest.fixture(scope="module")
def llama_model(exported):
    llama_cpp = pytest.importorskip("llama_cpp")
    # F32 KV cache: llama.cpp's default F16 cache rounds the latent, and minillm keeps float32.
    # logits_all keeps every position's logits in `scores`, where the greedy loop reads them.
    model = llama_cpp.Llama(model_path=str(exported), n_ctx=256, n_batch=256, n_threads=2, seed=0,
                            logits_all=True, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32,
                            verbose=False)
    yield llama_cpp, model
    model.close()


@pytest.fixture(scope="module")
def baseline_model(tmp_path_factory):
    return minillm.load(BASELINE, cache_dir=tmp_path_factory.mktemp("cache"), prefix_cache=False)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_llama_cpp_tokenizes_like_minillm(llama_model, baseline_model, prompt):
    _, model = llama_model
    assert model.tokenize(prompt.encode(), add_bos=True) == baseline_model.tokenizer.encode(prompt)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_llama_cpp_greedy_matches_minillm(llama_model, baseline_model, prompt):
    llama_cpp, model = llama_model
    prompt_ids = baseline_model.tokenizer.encode(prompt)
    ours = list(baseline_model.generate_ids(prompt_ids, max_new_tokens=GREEDY_TOKENS, temperature=0,
                                            speculative="none", stop_at_eos=False))
    theirs = llama_cpp_greedy(llama_cpp, model, prompt_ids, GREEDY_TOKENS)
    first_difference = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
    assert first_difference is None, f"first divergence at generated token {first_difference}: {ours} vs {theirs}"


@pytest.mark.parametrize("prompt", PROMPTS)
def test_llama_cpp_logits_match_minillm(llama_model, baseline_model, prompt):
    _, model = llama_model
    prompt_ids = baseline_model.tokenizer.encode(prompt)
    model.reset()
    model.eval(prompt_ids)
    theirs = np.asarray(model.scores[: len(prompt_ids)])
    ours = baseline_model.logits(prompt_ids)
    # float32 on both sides from the same weights, so only round-off differs (measured about 2e-5)
    assert np.abs(theirs - ours).max() <= 1e-3
