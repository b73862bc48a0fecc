"""Tests for the training tools under tools/: tokenizer, trainer, resume and Hugging Face export.

Everything runs on a small generated corpus with the "test" model size, on CPU, in a few
seconds per test. Skipped when torch is not installed (it is an optional dependency).
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from safetensors import safe_open  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from tools import train as train_cli  # noqa: E402
from tools import train_mtp  # noqa: E402
from tools.corpus import read_books, split_books, strip_gutenberg_boilerplate  # noqa: E402
from tools.export import export_model, load_checkpoint_model  # noqa: E402
from tools.train_tokenizer import check_round_trip, save_tokenizer, train_tokenizer  # noqa: E402

SUBJECTS = ["the little cat", "a brown dog", "the old king", "Alice", "the white rabbit", "her sister"]
VERBS = ["saw", "found", "followed", "liked", "called", "watched"]
OBJECTS = ["a red ball", "the garden", "the small door", "a cup of tea", "the tall tree", "the river"]
ENDINGS = ["in the morning", "after dinner", "near the house", "all day long", "once more"]


def generate_book(seed: int, paragraphs: int) -> str:
    """Return simple English paragraphs from a fixed grammar, so a tiny model can learn them."""
    rng = random.Random(seed)
    lines = []
    for _ in range(paragraphs):
        sentences = []
        for _ in range(rng.randint(2, 4)):
            sentence = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(ENDINGS)}."
            sentences.append(sentence[0].upper() + sentence[1:])
        lines.append(" ".join(sentences))
    return "\n\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    body = generate_book(0, 400)
    wrapped = (
        "The Project Gutenberg eBook of a test\n\n*** START OF THE PROJECT GUTENBERG EBOOK TEST ***\n"
        + body
        + "*** END OF THE PROJECT GUTENBERG EBOOK TEST ***\n\nLicence text that must not be trained on.\n"
    )
    (folder / "book_a.txt").write_text(wrapped, encoding="utf-8")
    (folder / "book_b.txt").write_text(generate_book(1, 400), encoding="utf-8")
    (folder / "book_c.txt").write_text(generate_book(2, 60), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tokenizer_dir(corpus_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    train_books, _ = split_books(read_books(corpus_dir), ["book_c.txt"])
    tokenizer = train_tokenizer([book.text for book in train_books], vocab_size=320, min_frequency=2)
    save_tokenizer(tokenizer, folder, model_max_length=1024)
    return folder


def run_cli(corpus_dir: Path, tokenizer_dir: Path, out: Path, *extra: str) -> None:
    train_cli.main([
        "--corpus", str(corpus_dir), "--tokenizer", str(tokenizer_dir), "--out", str(out),
        "--size", "test", "--seq-len", "32", "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "5",
        "--max-position-embeddings", "128", "--validation-books", "book_c.txt", "--eval-windows", "16",
        "--log-every", "5", *extra,
    ])


def test_strip_gutenberg_boilerplate_removes_header_and_footer():
    text = "Header\r\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\r\nBody line.\r\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\r\nFooter"
    assert strip_gutenberg_boilerplate(text) == "Body line.\n"
    assert strip_gutenberg_boilerplate("No markers here.") == "No markers here.\n"


def test_split_books_holds_out_named_books(corpus_dir):
    train, validation = split_books(read_books(corpus_dir), ["book_c.txt"])
    assert [book.name for book in validation] == ["book_c.txt"]
    assert [book.name for book in train] == ["book_a.txt", "book_b.txt"]
    assert "Licence text" not in train[0].text
    with pytest.raises(ValueError, match="not found"):
        split_books(read_books(corpus_dir), ["missing.txt"])


def test_tokenizer_round_trip_and_special_ids(tokenizer_dir):
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    assert tokenizer.token_to_id("<|bos|>") == 0
    assert tokenizer.token_to_id("<|eos|>") == 1
    assert tokenizer.get_vocab_size() == 320
    assert tokenizer.encode("The cat").ids[0] == 0

    for text in ["The little cat saw a red ball.\n\nAlice", "Caf\u00e9 \u2018quoted\u2019 \u2014 \U0001f600", "  spaces  "]:
        check_round_trip(tokenizer, text)

    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    assert config["bos_token"] == "<|bos|>"
    assert config["eos_token"] == "<|eos|>"
    assert config["model_max_length"] == 1024


def test_training_reduces_validation_loss(corpus_dir, tokenizer_dir, tmp_path):
    run_cli(corpus_dir, tokenizer_dir, tmp_path / "run", "--steps", "60", "--eval-every-minutes", "1000")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())

    # An untrained model scores about ln(320) = 5.8 nats; the grammar is learnable far below that.
    assert metrics["steps"] == 60
    assert metrics["val_main"] < 3.5
    assert metrics["val_mtp"] < 4.0
    assert metrics["val_mtp_accuracy"] > 0.1
    assert metrics["validation_books"] == ["book_c.txt"]
    assert len(metrics["expert_load"]) == 2  # one MoE main layer + the MTP block
    assert (tmp_path / "run" / "data" / "train_ids.npy").exists()


def test_resume_matches_uninterrupted_run(corpus_dir, tokenizer_dir, tmp_path):
    def arguments(out: Path, *extra: str):
        return train_cli.parse_args([
            "--corpus", str(corpus_dir), "--tokenizer", str(tokenizer_dir), "--out", str(out),
            "--size", "test", "--seq-len", "32", "--batch-size", "8", "--steps", "12", "--warmup-steps", "3",
            "--max-position-embeddings", "128", "--validation-books", "book_c.txt",
            "--eval-every-minutes", "1000", *extra,
        ])

    straight = train_cli.build_trainer(arguments(tmp_path / "straight"))
    straight.train()

    interrupted = train_cli.build_trainer(arguments(tmp_path / "resumed"))
    for _ in range(5):
        interrupted.train_step()
    interrupted.save_checkpoint()

    resumed = train_cli.build_trainer(arguments(tmp_path / "resumed", "--resume"))
    assert resumed.step == 5
    resumed.train()

    assert resumed.step == 12
    assert resumed.tokens_seen == straight.tokens_seen
    expected = straight.model.state_dict()
    for name, tensor in resumed.model.state_dict().items():
        assert torch.allclose(tensor, expected[name], rtol=0, atol=1e-6), name


@pytest.fixture(scope="module")
def trained_run(corpus_dir, tokenizer_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export_run")
    run_cli(corpus_dir, tokenizer_dir, out / "run", "--steps", "8", "--eval-every-minutes", "1000",
            "--export", str(out / "hf"), "--export-dtype", "float32")
    return out


def test_export_writes_hf_layout(trained_run):
    folder = trained_run / "hf"
    for name in ["config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "training_metrics.json"]:
        assert (folder / name).exists(), name

    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "deepseek_v3"
    assert config["scoring_func"] == "sigmoid"
    assert config["topk_method"] == "noaux_tc"
    assert config["num_nextn_predict_layers"] == 1
    assert config["tie_word_embeddings"] is False
    assert config["rope_scaling"]["type"] == "yarn"
    assert config["rope_scaling"]["factor"] == 4.0
    assert config["rope_scaling"]["original_max_position_embeddings"] == 32
    assert config["max_position_embeddings"] == 128

    mtp = f"model.layers.{config['num_hidden_layers']}."
    with safe_open(folder / "model.safetensors", framework="pt") as handle:
        names = set(handle.keys())
    for suffix in ["embed_tokens.weight", "enorm.weight", "hnorm.weight", "eh_proj.weight",
                   "shared_head.norm.weight", "shared_head.head.weight", "self_attn.q_a_proj.weight",
                   "mlp.experts.7.down_proj.weight", "mlp.gate.e_score_correction_bias"]:
        assert mtp + suffix in names, suffix
    assert "model.layers.1.mlp.experts.0.gate_proj.weight" in names
    assert "model.layers.0.mlp.gate_proj.weight" in names
    assert not any(name.startswith("mtp.") for name in names)


def test_bf16_export_keeps_norms_and_bias_in_float32(trained_run, tmp_path):
    model = load_checkpoint_model(trained_run / "run" / "checkpoint.pt")
    path = export_model(model, trained_run / "hf", tmp_path / "bf16")
    with safe_open(path, framework="pt") as handle:
        assert handle.get_tensor("model.layers.1.mlp.gate.e_score_correction_bias").dtype == torch.float32
        assert handle.get_tensor("model.norm.weight").dtype == torch.float32
        assert handle.get_tensor("model.layers.1.self_attn.q_b_proj.weight").dtype == torch.bfloat16
        assert handle.get_tensor("lm_head.weight").dtype == torch.bfloat16


def test_export_logits_match_transformers(trained_run):
    transformers = pytest.importorskip("transformers")
    model = load_checkpoint_model(trained_run / "run" / "checkpoint.pt").eval()
    # Give routing biases both signs so that the excluded-group fill value matters.
    with torch.no_grad():
        for layer in model.moe_layers():
            layer.gate.e_score_correction_bias.copy_(torch.linspace(-0.3, 0.3, layer.gate.num_experts))
    folder = trained_run / "hf_biased"
    export_model(model, trained_run / "hf", folder, dtype=torch.float32)

    reference = transformers.DeepseekV3ForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokens = torch.randint(2, model.config.vocab_size, (2, 41), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(tokens[:, :40], next_ids=tokens[:, 1:41])
        theirs = reference(tokens[:, :40])
    assert (ours["logits"] - theirs.logits).abs().max().item() < 1e-4


def test_export_mtp_logits_match_transformers_mtp_model(trained_run):
    transformers = pytest.importorskip("transformers")
    modeling_layers = pytest.importorskip("transformers.modeling_layers")
    if not hasattr(modeling_layers, "MtpModel"):
        pytest.skip("this transformers version has no MtpModel")
    model = load_checkpoint_model(trained_run / "run" / "checkpoint.pt").eval()
    folder = trained_run / "hf"
    reference = transformers.DeepseekV3ForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    # transformers 5.25 finds MTP weights through this pattern, which it hard-codes to layer 61
    # (DeepSeek-V3's layer count); point it at our MTP layer index.
    reference._keys_to_ignore_on_load_unexpected = [rf"model\.layers\.{model.config.num_hidden_layers}\..*"]
    mtp = modeling_layers.MtpModel.from_pretrained(reference)

    tokens = torch.randint(2, model.config.vocab_size, (2, 41), generator=torch.Generator().manual_seed(1))
    positions = torch.arange(40).unsqueeze(0)
    with torch.no_grad():
        ours = model(tokens[:, :40], next_ids=tokens[:, 1:41])
        hidden = reference.model(tokens[:, :40]).last_hidden_state
        mtp_hidden = mtp.forward_layer(0, hidden, positions, None, input_ids=tokens[:, 1:41])
        theirs = mtp._project_to_logits(mtp_hidden)
    assert (ours["mtp_logits"] - theirs).abs().max().item() < 1e-4


def run_train_mtp(model_dir: Path, corpus_dir: Path, out: Path, *extra: str) -> None:
    train_mtp.main([
        "--model", str(model_dir), "--corpus", str(corpus_dir), "--out", str(out), "--export", str(model_dir),
        "--export-dtype", "float32", "--validation-books", "book_c.txt", "--seq-len", "32", "--batch-size", "8",
        "--lr", "3e-3", "--warmup-steps", "2", "--eval-windows", "8", *extra,
    ])


def test_train_mtp_changes_only_mtp_tensors(trained_run, corpus_dir, tmp_path):
    # Export into the input folder, the way the default model is updated.
    shutil.copytree(trained_run / "hf", tmp_path / "model")
    run_train_mtp(tmp_path / "model", corpus_dir, tmp_path / "run", "--steps", "5")

    config = json.loads((trained_run / "hf" / "config.json").read_text())
    mtp = f"model.layers.{config['num_hidden_layers']}."
    # The MTP layer's embedding and head are copies of the frozen main-model tensors.
    copies = {mtp + "embed_tokens.weight", mtp + "shared_head.head.weight"}
    changed = []
    with safe_open(trained_run / "hf" / "model.safetensors", framework="pt") as before, \
            safe_open(tmp_path / "model" / "model.safetensors", framework="pt") as after:
        assert set(before.keys()) == set(after.keys())
        for name in before.keys():
            equal = torch.equal(before.get_tensor(name), after.get_tensor(name))
            if name.startswith(mtp) and name not in copies:
                if not equal:
                    changed.append(name)
            else:
                assert equal, name
    assert mtp + "eh_proj.weight" in changed
    assert mtp + "self_attn.q_a_proj.weight" in changed

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 5
    assert 0.0 <= metrics["before"]["val_agreement"] <= 1.0
    assert metrics["after"]["val_soft"] < metrics["before"]["val_soft"]


def test_load_exported_model_matches_checkpoint(trained_run):
    loaded = train_mtp.load_exported_model(trained_run / "hf").state_dict()
    expected = load_checkpoint_model(trained_run / "run" / "checkpoint.pt").state_dict()
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name


def test_load_exported_model_rejects_untied_mtp_head(trained_run, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "untied"
    folder.mkdir()
    (folder / "config.json").write_text((trained_run / "hf" / "config.json").read_text())
    tensors = load_file(trained_run / "hf" / "model.safetensors")
    num_layers = json.loads((folder / "config.json").read_text())["num_hidden_layers"]
    tensors[f"model.layers.{num_layers}.shared_head.head.weight"] += 1.0
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(ValueError, match="shared_head.head.weight differs"):
        train_mtp.load_exported_model(folder)
