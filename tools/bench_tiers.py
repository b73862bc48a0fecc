"""Benchmark the memory hierarchy, every case side by side in one run on one machine.

1. Time to first token at 512, 2048 and 8192 prompt tokens: recomputing the prompt versus
   loading its pages from the persistent prefix cache (written by an earlier run).
2. Decode tokens/s with 10% of the KV pages in hbm versus all of them, at a 2048-token context.
3. Bytes moved between tiers per generated token in both decode cases.

Usage: python tools/bench_tiers.py [--model DIR] [--text FILE] [--json OUT]
The prompt is the start of --text (default: a held-out book of the training corpus).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import minillm  # noqa: E402

HELD_OUT = Path(__file__).resolve().parent.parent.parent / "shared/corpus/gutenberg_children/pg00289_the_wind_in_the_willows.txt"
PAGE = 64


def prompt_ids(model, text: str, tokens: int) -> list[int]:
    ids = model.tokenizer.encode(text)
    if len(ids) < tokens:
        raise SystemExit(f"--text contains {len(ids)} tokens, fewer than the {tokens} this benchmark needs: pass a longer text")
    return ids[:tokens]


def time_to_first_token(model_dir: Path, ids: list[int], cache_dir: Path, prefix_cache: bool) -> tuple[float, int]:
    model = minillm.load(model_dir, cache_dir=cache_dir, page_tokens=PAGE, prefix_cache=prefix_cache)
    list(model.generate_ids(ids, max_new_tokens=1, temperature=0, speculative="none"))
    return model.last_stats.prefill_seconds, model.last_stats.prefix_cache_hit_tokens


def bench_prefix(model_dir: Path, text: str) -> list[dict]:
    rows = []
    probe = minillm.load(model_dir, prefix_cache=False)
    for tokens in (512, 2048, 8192):
        ids = prompt_ids(probe, text, tokens)
        with tempfile.TemporaryDirectory() as tmp:
            recompute, _ = time_to_first_token(model_dir, ids, Path(tmp), prefix_cache=False)
            time_to_first_token(model_dir, ids, Path(tmp), prefix_cache=True)  # writes the pages
            reuse, hits = time_to_first_token(model_dir, ids, Path(tmp), prefix_cache=True)
        rows.append({"prompt_tokens": tokens, "recompute_seconds": recompute, "reuse_seconds": reuse,
                     "reused_tokens": hits, "speedup": recompute / reuse})
        print(f"TTFT {tokens:5d} tokens: recompute {recompute:.3f} s, reuse {reuse:.3f} s "
              f"({hits} tokens from cache), {recompute / reuse:.1f}x", flush=True)
    return rows


def bench_decode(model_dir: Path, text: str, context: int = 2048, new_tokens: int = 64) -> list[dict]:
    probe = minillm.load(model_dir, prefix_cache=False)
    ids = prompt_ids(probe, text, context)
    cfg = probe.config
    pages = -(-(context + new_tokens) // PAGE)
    page_bytes = cfg.num_hidden_layers * PAGE * cfg.latent_dim * 4
    rows = []
    for label, hot_pages in (("all KV in hbm", pages), ("10% of KV in hbm", max(1, pages // 10))):
        with tempfile.TemporaryDirectory() as tmp:
            model = minillm.load(model_dir, cache_dir=tmp, page_tokens=PAGE, prefix_cache=False, hbm="4GiB",
                                 hbm_kv=hot_pages * page_bytes, dram="4GiB")
            after_prefill = {}

            def record(snapshot, store=after_prefill):
                if not store:
                    store.update({name: t["bytes_in"] for name, t in snapshot["tiers"].items()})

            list(model.generate_ids(ids, max_new_tokens=new_tokens, temperature=0, stop_at_eos=False,
                                    speculative="none", on_snapshot=record))
            final = model.last_snapshot
            moved = sum(t["bytes_in"] for t in final["tiers"].values()) - sum(after_prefill.values())
            stats = model.last_stats
            rows.append({"case": label, "hbm_pages": hot_pages, "total_pages": pages,
                         "decode_tokens_per_second": stats.decode_tokens_per_second,
                         "bytes_moved_per_token": moved / max(stats.generated_tokens - 1, 1),
                         "pages_by_tier": final["pages"]})
            print(f"decode, {label}: {stats.decode_tokens_per_second:.1f} tokens/s, "
                  f"{moved / max(stats.generated_tokens - 1, 1) / 1024:.1f} KiB moved per token, "
                  f"pages {final['pages']}", flush=True)
    rows[1]["ratio_to_all_in_hbm"] = rows[1]["decode_tokens_per_second"] / rows[0]["decode_tokens_per_second"]
    print(f"decode ratio (10% in hbm / all in hbm): {rows[1]['ratio_to_all_in_hbm']:.2f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=minillm.DEFAULT_MODEL_DIR)
    parser.add_argument("--text", type=Path, default=HELD_OUT, help="UTF-8 text the prompts are cut from")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    text = args.text.read_text(encoding="utf-8")
    results = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, numpy {np.__version__}",
               "date": time.strftime("%Y-%m-%d"), "model": str(args.model),
               "prefix_cache": bench_prefix(args.model, text), "decode": bench_decode(args.model, text)}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
