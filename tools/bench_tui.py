"""Measure how much the TUI's live refresh slows generation, side by side in one run.

Each round generates the same greedy continuation once per case, in alternating order:
- engine: `model.generate()` alone, with no snapshot callback and no UI;
- tui@HZ: the app running headless (Textual's test driver: full layout and rendering, no
  terminal writes), the prompt typed and submitted, and its panels refreshed HZ times a second;
- tui@0Hz: the same app with live refresh off (panels update once, at the end), so the
  difference to tui@HZ is the cost of refreshing alone.

Decode tokens/s comes from the engine's own statistics (GenerationStats). The table gives the
median over the rounds and the slowdowns against the engine case and against tui@0Hz.

Usage: python tools/bench_tui.py [--model DIR] [--tokens N] [--rounds R] [--refresh-hz 4 8 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import minillm  # noqa: E402
from tui.app import MiniLLMApp  # noqa: E402

PROMPT = "Once upon a time, in a small house at the edge of the woods,"
UI_SECONDS: list[float] = []  # CPU seconds of the app's thread, one entry per TUI run


def run_engine(model: minillm.LLM, prompt: str, tokens: int) -> minillm.GenerationStats:
    for _ in model.generate(prompt, max_new_tokens=tokens, temperature=0.0):
        pass
    return model.last_stats


async def drive_app(model: minillm.LLM, prompt: str, tokens: int, refresh_hz: float) -> minillm.GenerationStats:
    app = MiniLLMApp(model, temperature=0.0, max_tokens=tokens, refresh_hz=refresh_hz)
    async with app.run_test(size=(120, 40)) as pilot:
        field = app.query_one("#prompt")
        field.value = prompt
        field.focus()
        await pilot.pause()
        ui_started = time.thread_time()  # the app's event loop runs on this thread
        # Submit as Enter does, but not with pilot.press: after each key the pilot waits for the
        # app to go idle, polling 50 times a second for up to 2 s while the app generates.
        await field.action_submit()
        deadline = time.monotonic() + 10
        while not app.generating:
            if time.monotonic() > deadline:
                raise RuntimeError("the app did not start generating within 10 s of the prompt")
            await asyncio.sleep(0.01)
        await app.workers.wait_for_complete()
        while app.generating:  # until the app has handled the worker's last message
            await asyncio.sleep(0.01)
        UI_SECONDS.append(time.thread_time() - ui_started)
    return model.last_stats


def run_app(model: minillm.LLM, prompt: str, tokens: int, refresh_hz: float) -> minillm.GenerationStats:
    return asyncio.run(drive_app(model, prompt, tokens, refresh_hz))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: the model in weights/)")
    parser.add_argument("--prompt", default=PROMPT, help="text to continue")
    parser.add_argument("--tokens", type=int, default=256, help="tokens to generate per run (default 256)")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each case (default 5)")
    parser.add_argument("--refresh-hz", type=float, nargs="+", default=[4.0, 8.0, 30.0],
                        help="TUI refresh rates to measure (default 4 8 30)")
    parser.add_argument("--hbm", default=None, help="hbm budget, like 64MiB (default: the engine's)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as cache:
        os.environ["MINILLM_CACHE_DIR"] = cache
        # No prefix cache, so every run computes the same prompt and the runs stay comparable.
        model = minillm.load(args.model, hbm=args.hbm, prefix_cache=False)
        cases = {"engine": lambda: run_engine(model, args.prompt, args.tokens)}
        for hz in [0.0, *args.refresh_hz]:
            cases[f"tui@{hz:g}Hz"] = lambda hz=hz: run_app(model, args.prompt, args.tokens, hz)

        for run in cases.values():  # warm-up: caches, lazy imports, first layouts
            run()
        results: dict[str, list[minillm.GenerationStats]] = {name: [] for name in cases}
        ui_seconds: dict[str, list[float]] = {name: [] for name in cases}
        for round_index in range(args.rounds):
            names = list(cases) if round_index % 2 == 0 else list(reversed(cases))
            for name in names:
                UI_SECONDS.clear()
                results[name].append(cases[name]())
                ui_seconds[name].extend(UI_SECONDS)

    print(f"model: {model.path}  prompt tokens: {results['engine'][0].prompt_tokens}  "
          f"generated: {results['engine'][0].generated_tokens}  rounds: {args.rounds}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{platform.platform()}")
    print()
    print("| case | tokens | decode tokens/s (median) | min | max | slowdown vs engine "
          "| slowdown vs tui@0Hz | UI thread CPU s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base = statistics.median(stats.decode_tokens_per_second for stats in results["engine"])
    idle = statistics.median(stats.decode_tokens_per_second for stats in results["tui@0Hz"])
    for name, runs in results.items():
        rates = [stats.decode_tokens_per_second for stats in runs]
        median = statistics.median(rates)
        slowdown = f"{100 * (1 - median / base):+.1f}%" if name != "engine" else "-"
        versus_idle = f"{100 * (1 - median / idle):+.1f}%" if name not in ("engine", "tui@0Hz") else "-"
        tokens = runs[0].generated_tokens
        ui = f"{statistics.median(ui_seconds[name]):.3f}" if ui_seconds[name] else "-"
        print(f"| {name} | {tokens} | {median:.1f} | {min(rates):.1f} | {max(rates):.1f} | {slowdown} "
              f"| {versus_idle} | {ui} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
