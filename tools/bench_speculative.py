"""Benchmark MTP speculative decoding against plain decoding, side by side in one run.

Prompts are passages of the held-out validation books. Every prompt is decoded greedily with
speculative "none" and with MTP at k = 1, 2, 3 draft tokens, and once more at k = 1 with a draft
head that scores the whole vocabulary, the cases interleaved per prompt so machine noise hits
them alike. Reports decode tokens/s, speedup, acceptance rate and tokens per
forward pass, then what one step costs: a verification step of k + 1 rows and a draft step,
each against a plain decode step, timed in the same run. From those it derives the ceiling: the
speedup MTP would give if every draft were accepted.

Usage: python tools/bench_speculative.py [--model DIR] [--text FILE ...] [--prompts 8] [-n 128]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import minillm  # noqa: E402

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared/corpus/gutenberg_children"
HELD_OUT = [CORPUS / "pg00289_the_wind_in_the_willows.txt", CORPUS / "pg00778_five_children_and_it.txt"]
# (speculative, draft tokens, draft head): "short" scores the default draft vocabulary, "full" every token
CASES = [("none", 1, "short"), ("mtp", 1, "short"), ("mtp", 2, "short"), ("mtp", 3, "short"), ("mtp", 1, "full")]


SKIP_TOKENS = 1000  # tokens skipped at both ends of a book: front and back matter


def passages(model, texts: dict[Path, str], count: int, length: int, seed: int) -> list[list[int]]:
    """Cut `count` prompts of `length` tokens from the texts, in turn, at random places."""
    rng = np.random.default_rng(seed)
    ids = []
    for path, text in texts.items():
        ids.append(model.tokenizer.encode(text, add_bos=False))
        if len(ids[-1]) <= length + 2 * SKIP_TOKENS:
            raise SystemExit(f"{path} is too short: {len(ids[-1])} tokens, and prompts of {length} tokens "
                             f"need more than {length + 2 * SKIP_TOKENS}; pass a longer text")
    prompts = []
    for i in range(count):
        book = ids[i % len(ids)]
        start = int(rng.integers(SKIP_TOKENS, len(book) - length - SKIP_TOKENS))
        prompts.append([model.tokenizer.bos_id] + book[start : start + length])
    return prompts


class StepTimer:
    """Wall time of every decode and draft call of a model's forward, by kind and row count."""

    def __init__(self, forward):
        self.seconds: dict[tuple[str, int], list[float]] = defaultdict(list)
        decode, mtp = forward.decode, forward.mtp

        def timed_decode(tokens, start, caches, engram=None):
            began = time.perf_counter()
            result = decode(tokens, start, caches, engram)
            self.seconds["verify", len(tokens)].append(time.perf_counter() - began)
            return result

        def timed_mtp(hidden, next_ids, positions, cache, absorbed=True):
            began = time.perf_counter()
            result = mtp(hidden, next_ids, positions, cache, absorbed)
            if absorbed:  # not the prompt's pass during prefill
                self.seconds["draft", next_ids.size].append(time.perf_counter() - began)
            return result

        forward.decode, forward.mtp = timed_decode, timed_mtp

    def cost(self, kind: str, rows: int) -> float | None:
        """Median time of one call, relative to a plain one-row decode step."""
        times = self.seconds.get((kind, rows))
        return float(np.median(times) / np.median(self.seconds["verify", 1])) if times else None


def report_step_costs(timer: StepTimer, largest_k: int) -> dict:
    """Print and return the step costs and, per k, the speedup if every draft were accepted."""
    costs = {f"{kind}_{rows}_rows": timer.cost(kind, rows) for kind in ("verify", "draft")
             for rows in range(1, largest_k + 2) if timer.cost(kind, rows) is not None}
    print("step cost against a plain decode step (median): a verification step of N rows checks N - 1 "
          "drafts; a draft step of N rows runs the MTP module over the N positions verified since the "
          "last draft")
    for kind in ("verify", "draft"):
        print(f"  {kind:6s} " + ", ".join(f"{rows} row{'s' if rows > 1 else ''} {timer.cost(kind, rows):.2f}x"
                                         for rows in range(1, largest_k + 2) if timer.cost(kind, rows) is not None))
    ceilings = {}
    for k in range(1, largest_k + 1):
        # every draft accepted: verify k + 1 rows, the MTP module reads those k + 1 positions,
        # and chains k - 1 more single-row drafts
        parts = [timer.cost("verify", k + 1), timer.cost("draft", k + 1), timer.cost("draft", 1)]
        if None not in parts:
            ceilings[k] = (k + 1) / (parts[0] + parts[1] + (k - 1) * parts[2])
            print(f"mtp k={k}: with every draft accepted, at most {ceilings[k]:.2f}x "
                  f"(k + 1 tokens per verification of k + 1 rows, a draft step of k + 1 rows and k - 1 of 1 row)")
    return {"step_costs": costs, "ceilings": ceilings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=minillm.DEFAULT_MODEL_DIR,
                        help="checkpoint directory with an MTP module (default: the model in weights/)")
    parser.add_argument("--text", type=Path, nargs="+", default=HELD_OUT,
                        help="UTF-8 texts to cut the prompts from (default: the two held-out training books, "
                             "which lie outside this repository)")
    parser.add_argument("--prompts", type=int, default=8, help="prompts to decode (default 8)")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="tokens per prompt (default 64)")
    parser.add_argument("-n", "--new-tokens", type=int, default=128, help="greedy tokens per case (default 128)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    args = parser.parse_args()
    missing = [str(path) for path in args.text if not path.is_file()]
    if missing:
        raise SystemExit(f"text not found: {', '.join(missing)}; pass UTF-8 files with --text FILE ...")

    model = minillm.load(args.model, prefix_cache=False)
    models = {"short": model,
              "full": minillm.load(args.model, prefix_cache=False, draft_vocab=model.config.vocab_size)}
    prompts = passages(model, {path: path.read_text(encoding="utf-8") for path in args.text}, args.prompts,
                       args.prompt_tokens, seed=0)
    print(f"{args.model}: {args.prompts} prompts of {args.prompt_tokens} tokens, {args.new_tokens} greedy "
          f"tokens per case, on {platform.processor() or platform.machine()}", flush=True)
    for loaded in models.values():
        list(loaded.generate_ids(prompts[0], max_new_tokens=8, temperature=0))  # warm up caches and experts
    timer = StepTimer(model.forward)
    totals = {case: {"tokens": 0, "seconds": 0.0, "drafts": 0, "accepted": 0, "forwards": 0} for case in CASES}
    for prompt in prompts:
        outputs = {}
        for case in CASES:
            mode, k, head = case
            ids = list(models[head].generate_ids(prompt, max_new_tokens=args.new_tokens, temperature=0,
                                                 stop_at_eos=False, speculative=mode, draft_tokens=k))
            stats = models[head].last_stats
            outputs[case] = ids
            t = totals[case]
            t["tokens"] += stats.generated_tokens - 1
            t["seconds"] += stats.decode_seconds
            t["drafts"] += stats.draft_tokens
            t["accepted"] += stats.accepted_tokens
            t["forwards"] += stats.verify_forwards
        if any(outputs[case] != outputs[CASES[0]] for case in CASES):
            raise SystemExit("speculative output differs from plain greedy decoding")

    base = totals[CASES[0]]["tokens"] / totals[CASES[0]]["seconds"]
    rows = []
    for case, t in totals.items():
        speed = t["tokens"] / t["seconds"]
        rows.append({"speculative": case[0], "draft_tokens": case[1] if case[0] == "mtp" else 0,
                     "draft_vocab": (model.mtp.draft_vocab if case[2] == "short" else model.config.vocab_size)
                     if case[0] == "mtp" else None,
                     "decode_tokens_per_second": speed, "speedup": speed / base,
                     "acceptance_rate": t["accepted"] / t["drafts"] if t["drafts"] else None,
                     "tokens_per_forward": t["tokens"] / t["forwards"]})
        label = "none"
        if case[0] == "mtp":
            label = f"mtp k={case[1]}, full head" if case[2] == "full" else f"mtp k={case[1]}"
        acceptance = f"{rows[-1]['acceptance_rate']:.3f}" if t["drafts"] else "-"
        print(f"{label:20s} {speed:8.1f} tokens/s  {speed / base:5.2f}x  acceptance {acceptance}  "
              f"tokens/forward {rows[-1]['tokens_per_forward']:.2f}", flush=True)
    steps = report_step_costs(timer, max(k for _, k, _ in CASES))
    if args.json:
        args.json.write_text(json.dumps({"machine": platform.machine(), "date": time.strftime("%Y-%m-%d"),
                                         "prompts": args.prompts, "new_tokens": args.new_tokens, "rows": rows,
                                         **steps}, indent=2))


if __name__ == "__main__":
    main()
