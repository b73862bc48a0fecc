"""Benchmark Engram's cost per token against one MoE layer's, side by side in one run.

For a decode step (1 token) and a prefill chunk (256 tokens) of text from a held-out book, the
script times, on the default model:
- Engram lookup: hashing the new tokens and gathering their rows from the memory-mapped table
  (EngramState.prepare), the part that can run before the forward pass;
- Engram layer: the gate, value, convolution and residual update (EngramLayer.forward);
- one MoE layer: router, routed and shared experts (moe_forward), with every expert resident.
The cases alternate within each repetition, so machine noise hits them alike. The table reports
median microseconds per token and the ratio to the MoE layer.

Usage: python tools/bench_engram.py [--model DIR] [--repeats 200]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import minillm  # noqa: E402
from minillm.model.moe import moe_forward  # noqa: E402
from minillm.model.norm import rms_norm  # noqa: E402

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared/corpus/gutenberg_children"
HELD_OUT = CORPUS / "pg00289_the_wind_in_the_willows.txt"
SAMPLE_TEXT = "Once upon a time there was a little house at the edge of the wood. " * 40


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(model, ids: np.ndarray, tokens: int, repeats: int) -> dict:
    """Median seconds per call for each part, on `tokens` new tokens after ids[:start]."""
    transformer = model.transformer
    layer_id, engram = next(iter(transformer.engram.items()))
    moe_layer = next(i for i in range(model.config.num_hidden_layers) if model.config.is_moe_layer(i))
    moe = transformer.weights.layers[moe_layer].ffn

    start = ids.size - tokens
    positions = np.arange(start, ids.size)
    state = transformer.new_engram_state(ids.size + 8)
    if start:
        state.prepare(ids[:start], np.arange(start))
    # Real hidden states of the text, so routing picks experts as in use; timing depends only on shapes.
    hidden = transformer.hidden_states(ids, np.arange(ids.size))[start:]
    x = rms_norm(hidden, transformer.weights.layers[moe_layer].post_attention_norm, model.config.rms_norm_eps)
    gathered = state.prepare(ids[start:], positions)
    moe_forward(model.config, moe, x)  # streams every routed expert it needs into the cache

    parts = {
        "engram lookup": lambda: state.prepare(ids[start:], positions),
        "engram layer": lambda: engram.forward(hidden, gathered[layer_id], state.history[layer_id], positions),
        "moe layer": lambda: moe_forward(model.config, moe, x),
    }
    samples = {name: [] for name in parts}
    for _ in range(repeats):  # interleave the parts
        for name, fn in parts.items():
            samples[name].append(seconds(fn))
    return {name: float(np.median(values)) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=minillm.DEFAULT_MODEL_DIR)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    model = minillm.load(args.model, prefix_cache=False)
    if not model.transformer.engram:
        sys.exit(f"{args.model} has no Engram layer")
    text = HELD_OUT.read_text(encoding="utf-8")[20000:40000] if HELD_OUT.is_file() else SAMPLE_TEXT
    ids = np.array([model.tokenizer.bos_id] + model.tokenizer.encode(text, add_bos=False)[:512])

    rows = []
    with threadpool_limits(1, user_api="blas"):  # as in decoding
        for label, tokens in (("decode, 1 token", 1), ("prefill, 256 tokens", 256)):
            result = measure(model, ids[: 256 + tokens], tokens, args.repeats)
            per_token = {name: seconds / tokens * 1e6 for name, seconds in result.items()}
            rows.append({"case": label, "tokens": tokens, "microseconds_per_token": per_token})

    table = model.transformer.engram[next(iter(model.transformer.engram))].w.table
    snapshot = model.memory.snapshot()
    print(f"# {platform.processor() or platform.machine()}, numpy {np.__version__}, model {args.model.name}, "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"Engram table: {table.stored.shape[0]:,} rows x {table.stored.shape[1]} ({table.nbytes / 2**20:.1f} MiB, "
          f"{table.stored.dtype}), tiers: " + ", ".join(
              f"{name} engram {tier['used_by_kind']['engram'] / 2**20:.1f} MiB" for name, tier in snapshot["tiers"].items()))
    print("| case | engram lookup | engram layer | engram total | one MoE layer | engram / MoE |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        us = row["microseconds_per_token"]
        total = us["engram lookup"] + us["engram layer"]
        row["engram_over_moe"] = total / us["moe layer"]
        print(f"| {row['case']} | {us['engram lookup']:.1f} us | {us['engram layer']:.1f} us | {total:.1f} us | "
              f"{us['moe layer']:.1f} us | {row['engram_over_moe']:.2f}x |")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
