"""Text generation through the public API and the CLI, on a tiny random model with a tokenizer."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minillm
from minillm.errors import GenerationError, TokenizerError

from helpers import write_checkpoint


def byte_token_ids(model, text):
    """One token per UTF-8 byte, so multi-byte characters are split across tokens."""
    byte_to_char = dict(enumerate(_byte_level_chars()))
    return [model.tokenizer.hf.token_to_id(byte_to_char[b]) for b in text.encode("utf-8")]


def _byte_level_chars():
    """The GPT-2 byte-to-unicode table that byte-level BPE uses for its base tokens."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def test_stream_holds_back_partial_characters(tiny_model_dir):
    model = minillm.load(tiny_model_dir)
    ids = byte_token_ids(model, "a東🦊")
    assert len(ids) == 1 + 3 + 4
    stream = model.tokenizer.stream()
    pieces = [stream.push(i) for i in ids]
    assert pieces == ["a", "", "", "東", "", "", "", "🦊"]


def test_generate_pieces_join_to_decoded_text(tiny_model_dir):
    model = minillm.load(tiny_model_dir)
    pieces = list(model.generate("東京 🦊", max_new_tokens=40, temperature=1.0, seed=3))
    ids = list(model.generate_ids("東京 🦊", max_new_tokens=40, temperature=1.0, seed=3))
    assert "".join(pieces) == model.tokenizer.decode(ids)


def test_seeded_sampling_reproducible(tiny_model_dir):
    model = minillm.load(tiny_model_dir)
    first = list(model.generate_ids("Once upon", max_new_tokens=12, temperature=0.9, top_k=20, top_p=0.9, seed=5))
    again = list(model.generate_ids("Once upon", max_new_tokens=12, temperature=0.9, top_k=20, top_p=0.9, seed=5))
    assert first == again


def test_prompt_gets_bos(tiny_model_dir):
    model = minillm.load(tiny_model_dir)
    assert model.tokenizer.encode("Once")[0] == model.tokenizer.bos_id == 0


def test_stops_at_eos(tiny_model_dir, monkeypatch):
    model = minillm.load(tiny_model_dir)
    eos_first = np.zeros((1, model.config.vocab_size), dtype=np.float32)
    eos_first[0, 1] = 10.0  # EOS is id 1 in the tiny model
    monkeypatch.setattr(model.transformer, "logits", lambda hidden: eos_first)
    ids = list(model.generate_ids([0, 5, 6], max_new_tokens=10, temperature=0))
    assert ids == [1]
    assert model.last_stats.finish_reason == "eos"


def test_stats_counts(tiny_model_dir):
    model = minillm.load(tiny_model_dir)
    ids = list(model.generate_ids([0, 5, 6, 7], max_new_tokens=6, temperature=0, stop_at_eos=False))
    stats = model.last_stats
    assert len(ids) == stats.generated_tokens == 6
    assert stats.prompt_tokens == 4
    assert stats.finish_reason == "length"
    assert stats.decode_tokens_per_second > 0


@pytest.mark.parametrize("prompt, message", [
    ([], "the prompt is empty"),
    ([0, 999], "token id 999 is outside the vocabulary"),
    ([-1], "token id -1 is outside the vocabulary"),
])
def test_bad_prompt_ids(tiny_model_dir, prompt, message):
    model = minillm.load(tiny_model_dir)
    with pytest.raises(GenerationError, match=message):
        list(model.generate_ids(prompt, max_new_tokens=2))


def test_text_prompt_without_tokenizer(tmp_path):
    model = minillm.load(write_checkpoint(tmp_path))
    with pytest.raises(TokenizerError, match="has no tokenizer.json"):
        list(model.generate("hello"))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "minillm.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_generate_with_stats(tiny_model_dir):
    result = run_cli("generate", "--model", str(tiny_model_dir), "--prompt", "Once upon a time", "-n", "8",
                     "--temperature", "0", "--stats")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stderr.strip().splitlines()[-1])
    for key in ("prompt_tokens", "generated_tokens", "prefill_seconds", "decode_seconds", "decode_tokens_per_second"):
        assert key in stats
    assert stats["generated_tokens"] <= 8


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent/model"], "model directory not found: /nonexistent/model"),
    (["--top-p", "2"], "invalid top_p 2.0"),
    (["--temperature", "-1"], "invalid temperature -1.0"),
    (["--seed", "-1"], "invalid seed -1"),
    (["--draft-vocab", "-3"], "invalid value -3: must be 1 or more"),
    (["-n", "abc"], "invalid integer 'abc'"),
    (["--model", str(Path(__file__).parent.parent / "weights" / "minillm-tiny"), "--draft-vocab", "99999"],
     "invalid draft vocabulary 99999: use 1 to 4096 token ids"),
])
def test_cli_errors_are_one_line(tiny_model_dir, args, message):
    base = ["generate", "--prompt", "hi"] + ([] if "--model" in args else ["--model", str(tiny_model_dir)])
    result = run_cli(*base, *args)
    assert result.returncode == 2
    assert result.stderr.strip() == f"minillm: error: {message}" or message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_perplexity(tiny_model_dir, tmp_path):
    text = tmp_path / "story.txt"
    text.write_text("Once upon a time there was a little fox. The owl answered.\n" * 3)
    result = run_cli("perplexity", "--model", str(tiny_model_dir), "--json", str(text))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["tokens"] > 10
    assert report["perplexity"] == pytest.approx(np.exp(report["mean_loss"]))
