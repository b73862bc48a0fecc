"""`minillm generate --trace`: what it writes, that it never changes the output, and that the
trace quoted in docs/tour.md is what the default model produces today."""

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

import minillm
from minillm.cli import main
from minillm.engine.trace import Tracer
from minillm.model.mla import attention_entropy

from helpers import TINY_V3, write_checkpoint, write_tokenizer

TOUR = Path(__file__).resolve().parent.parent / "docs" / "tour.md"
PROOF = re.compile(r"<!-- trace-proof: (?P<command>minillm generate .+?) -->\s*```text\n(?P<trace>.*?)```", re.S)
PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def mtp_model_dir(tmp_path_factory):
    directory = write_checkpoint(tmp_path_factory.mktemp("tiny_mtp_trace"),
                                 {**TINY_V3, "num_nextn_predict_layers": 1}, seed=4)
    write_tokenizer(directory)
    return directory


def generate(capsys, model_dir, cache_dir, *extra):
    """Run `minillm generate` in process; returns (stdout, stderr)."""
    args = ["generate", "--model", str(model_dir), "--prompt", PROMPT, "-n", "6", "--temperature", "0",
            "--cache-dir", str(cache_dir), "--no-prefix-cache", "--page-tokens", "4", "--hbm-kv", "2KiB", *extra]
    assert main(args) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


@pytest.mark.parametrize("speculative", ["none", "mtp"])
def test_trace_keeps_stdout(capsys, mtp_model_dir, tmp_path, speculative):
    plain, _ = generate(capsys, mtp_model_dir, tmp_path, "--speculative", speculative)
    traced, trace = generate(capsys, mtp_model_dir, tmp_path, "--speculative", speculative, "--trace", "6")
    assert traced == plain
    assert trace.startswith("trace: prompt 'Once upon a time'")


def test_trace_lists_every_layer(capsys, mtp_model_dir, tmp_path):
    _, trace = generate(capsys, mtp_model_dir, tmp_path, "--speculative", "none", "--trace")
    lines = trace.splitlines()
    layers = [line for line in lines if line.startswith("  layer ")]
    assert [line.split()[1] for line in layers] == ["0", "1", "2"]
    assert "(dense)" in layers[0]
    assert all("(moe)" in line for line in layers[1:])
    rows = [line for line in lines if line.startswith("    pos ")]
    assert len(rows) == 3  # prefill shows only the last prompt position
    assert all("experts" in row and "+ 1 shared" in row for row in rows[1:])
    assert "experts" not in rows[0]
    assert "c (32) + k_rope (8) = 40 float32 = 160 B" in trace
    assert [line for line in lines if line.startswith("token ")] == [lines[-1]]
    assert lines[-1].startswith("token 1: ")


def test_trace_shows_page_tiers(capsys, mtp_model_dir, tmp_path):
    # 2KiB of hbm for KV fits one 4-token page (3 layers x 4 x 40 x 4 B = 1920 B), so older pages go to dram.
    _, trace = generate(capsys, mtp_model_dir, tmp_path, "--speculative", "none", "--trace", "3")
    maps = re.findall(r"read KV pages (\w+)", trace)
    assert maps[0] == "hd"  # the prompt's 8 positions: page 0 stays in hbm while page 1 is written
    assert all(set(m) <= set("hds") for m in maps)
    assert any(m.endswith("h") and "d" in m for m in maps[3:])


def test_trace_shows_mtp_verification(capsys, mtp_model_dir, tmp_path):
    _, trace = generate(capsys, mtp_model_dir, tmp_path, "--speculative", "mtp", "--trace", "3")
    drafts = re.findall(r"mtp: draft for position (\d+): (\d+)", trace)
    verdicts = re.findall(r"main model's prediction for position (\d+) \(row (\d+)\): argmax (\d+) .*-> (\w+)", trace)
    assert drafts and len(drafts) == len(verdicts)
    for (draft_position, draft), (position, row, argmax, verdict) in zip(drafts, verdicts):
        assert draft_position == position
        assert int(row) == int(position) - 1
        assert verdict == ("accepted" if draft == argmax else "rejected")  # greedy: argmax equality
    tokens = re.findall(r"^token (\d+): ", trace, re.M)
    assert tokens[:3] == ["1", "2", "3"]


def test_trace_numbers_match_model(mtp_model_dir, tmp_path):
    """The routing and cache rows the trace prints are the forward pass's own arrays."""
    model = minillm.load(mtp_model_dir, cache_dir=tmp_path, prefix_cache=False)
    ids = model.tokenizer.encode(PROMPT)
    seen = {}
    model.transformer.observer = lambda layer, output: seen.setdefault(layer, output)
    model.logits(ids)
    reference = seen[1]
    assert reference.hidden is None  # tracing off: only the routing is filled

    class Sink:
        text = ""

        def write(self, text):
            self.text += text

        def flush(self):
            pass

    sink = Sink()
    tracer = Tracer(model, sink, tokens=1)
    tracer.start(PROMPT)
    list(model.generate_ids(PROMPT, max_new_tokens=1, temperature=0, speculative="none"))
    tracer.stop()
    chosen = " ".join(f"{int(e)}:{float(w):.3f}"
                      for e, w in zip(reference.expert_indices[-1], reference.expert_weights[-1]))
    groups = " ".join(str(g) for g in sorted({int(e) // 2 for e in reference.expert_indices[-1]}))
    assert f"experts {chosen} (groups {groups}) + 1 shared" in sink.text
    assert all(not attention.trace and attention.last_entropy is None for attention in model.transformer.attention)


def test_attention_entropy():
    uniform = np.full((4, 1, 8), 1 / 8)
    assert attention_entropy(uniform) == pytest.approx([np.log(8)])
    masked = np.zeros((2, 1, 8))
    masked[:, 0, 3] = 1.0  # all mass on one key, the rest masked
    assert attention_entropy(masked) == pytest.approx([0.0])


def test_tracer_chains_routing_counts(mtp_model_dir, tmp_path):
    model = minillm.load(mtp_model_dir, cache_dir=tmp_path, prefix_cache=False)
    list(model.generate_ids(PROMPT, max_new_tokens=4, temperature=0, speculative="none"))
    plain_counts = model.routing_counts.copy()
    tracer = Tracer(model, open(tmp_path / "trace.txt", "w"), tokens=2)
    tracer.start(PROMPT)
    list(model.generate_ids(PROMPT, max_new_tokens=4, temperature=0, speculative="none"))
    tracer.stop()
    tracer.stream.close()
    assert (model.routing_counts == plain_counts).all()
    assert model.transformer.observer == model._count_routing


@pytest.mark.skipif(not minillm.DEFAULT_MODEL_DIR.is_dir(), reason="the default model is not in weights/")
def test_tour_trace_is_current(tmp_path):
    match = PROOF.search(TOUR.read_text(encoding="utf-8"))
    assert match, "docs/tour.md has no <!-- trace-proof: ... --> block"
    args = shlex.split(match["command"])[1:]
    trace_file = tmp_path / "trace.txt"
    assert main([*args, "--trace-file", str(trace_file), "--cache-dir", str(tmp_path)]) == 0
    assert trace_file.read_text(encoding="utf-8") == match["trace"]


def test_trace_file_unwritable(capsys, mtp_model_dir, tmp_path):
    args = ["generate", "--model", str(mtp_model_dir), "--prompt", PROMPT, "-n", "1", "--temperature", "0",
            "--cache-dir", str(tmp_path), "--trace-file", str(tmp_path / "missing" / "trace.txt")]
    assert main(args) == 2
    assert "cannot write the trace file" in capsys.readouterr().err


def test_trace_file_gets_trace(capsys, mtp_model_dir, tmp_path):
    trace_file = tmp_path / "trace.txt"
    _, err = generate(capsys, mtp_model_dir, tmp_path, "--trace-file", str(trace_file))
    assert err == ""
    assert trace_file.read_text(encoding="utf-8").startswith("trace: prompt")
