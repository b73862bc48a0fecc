"""The `minillm` command line: argument parsing only; the work happens in the public API."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
from pathlib import Path

import minillm
from minillm import kernels
from minillm.engine.perplexity import perplexity
from minillm.engine.trace import Tracer
from minillm.memory import prefix_cache
from minillm.memory.sizes import format_size
from minillm.memory.spill import remove_stale_spill_files
from minillm.memory.tiers import default_cache_dir
from minillm.errors import MiniLLMError
from minillm.kvcalc import cli as kv_calc_cli

log = logging.getLogger("minillm.cli")


def _int_at_least(text: str, minimum: int) -> int:
    """Parse an integer of `minimum` or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"invalid value {value}: must be {minimum} or more")
    return value


def _count(text: str) -> int:
    """Parse an integer of 0 or more (0 often turns the option off)."""
    return _int_at_least(text, 0)


def _positive_int(text: str) -> int:
    """Parse an integer of 1 or more."""
    return _int_at_least(text, 1)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line that points to --help, without the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="minillm", description="A miniature DeepSeek-style inference engine.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log loading and timing details to stderr")
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="stream a continuation of a prompt to stdout")
    gen.add_argument("--model", type=Path, default=None,
                     help="checkpoint directory in Hugging Face layout (default: the model in weights/)")
    gen.add_argument("--prompt", required=True, help="text to continue")
    gen.add_argument("-n", "--max-new-tokens", type=_count, default=200, help="tokens to generate (default 200)")
    gen.add_argument("--temperature", type=_float, default=0.8, help="sampling temperature; 0 is greedy (default 0.8)")
    gen.add_argument("--top-k", type=_count, default=40, help="sample from the K most likely tokens; 0 disables (default 40)")
    gen.add_argument("--top-p", type=_float, default=0.95, help="nucleus sampling mass in (0, 1]; 1 disables (default 0.95)")
    gen.add_argument("--seed", type=int, default=None, help="random seed for reproducible sampling")
    gen.add_argument("--speculative", choices=("auto", "mtp", "none"), default="auto",
                     help="draft tokens with the checkpoint's MTP module and verify them in one pass "
                          "(default auto: mtp when the checkpoint has MTP weights)")
    gen.add_argument("--draft-tokens", type=_positive_int, default=1,
                     help="MTP draft tokens per verification step (default 1)")
    gen.add_argument("--draft-vocab", type=_positive_int, default=None, metavar="N",
                     help="score only the N lowest token ids in the MTP draft head (default: a quarter of the "
                          "vocabulary; pass the vocabulary size to score all)")
    gen.add_argument("--stats", action="store_true",
                     help="print timing, token counts and the memory tiers as one JSON object on the last line of stderr")
    gen.add_argument("--stats-every", type=_count, default=0, metavar="N",
                     help="also write a JSON line of statistics to stderr every N generated tokens")
    gen.add_argument("--trace", type=_positive_int, nargs="?", const=1, default=None, metavar="N",
                     help="write a per-layer trace of the first N generated tokens to stderr (N defaults to 1)")
    gen.add_argument("--trace-file", type=Path, default=None, metavar="PATH",
                     help="write the trace to this file instead of stderr (implies --trace 1 unless --trace is given)")
    _add_memory_flags(gen)
    _add_engine_flags(gen)

    ppl = commands.add_parser("perplexity", help="mean loss and perplexity of the model on text files")
    ppl.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: the model in weights/)")
    ppl.add_argument("--context", type=_positive_int, default=None,
                     help="tokens per scored window (default: the model's trained context length)")
    ppl.add_argument("--json", action="store_true", help="print the result as JSON")
    ppl.add_argument("files", nargs="+", type=Path, help="UTF-8 text files")
    _add_memory_flags(ppl)

    cache = commands.add_parser("cache", help="list or clear the persistent prefix cache")
    cache.add_argument("action", choices=("list", "clear"))
    cache.add_argument("--cache-dir", type=Path, default=None,
                       help="cache directory (default: $MINILLM_CACHE_DIR, else ~/.cache/minillm)")

    tui = commands.add_parser("tui", help="interactive terminal UI: generate while the memory tiers update live")
    tui.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: the model in weights/)")
    _add_memory_flags(tui)
    _add_engine_flags(tui)

    kv_calc_cli.add_parser(commands)
    return parser


def _add_engine_flags(parser: argparse.ArgumentParser) -> None:
    engine = parser.add_argument_group("engine")
    engine.add_argument("--backend", choices=("numba", "numpy"), default="numba",
                        help="decode on compiled Numba kernels (default) or on the plain NumPy reference")
    engine.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                        help="BLAS threads for prefill (default: the CPUs this process may use); "
                             "decode steps run on one thread")


def _add_memory_flags(parser: argparse.ArgumentParser) -> None:
    tiers = parser.add_argument_group("memory tiers (sizes like 64MiB, 2GB or 4096)")
    tiers.add_argument("--hbm", default=None, help="budget of the hot tier: pinned weights, experts, KV pages "
                                                   "(default 512MiB)")
    tiers.add_argument("--dram", default=None, help="budget of the host tier: the mapped checkpoint, warm KV "
                                                    "pages (default 2GiB)")
    tiers.add_argument("--ssd", default=None, help="budget of the disk tier: spilled KV pages and the prefix "
                                                   "cache (default 4GiB)")
    tiers.add_argument("--hbm-kv", default=None, help="part of --hbm for KV pages (default: what is left after "
                                                      "the pinned weights and up to half of the rest for experts)")
    tiers.add_argument("--cache-dir", type=Path, default=None,
                       help="directory of the ssd tier (default: $MINILLM_CACHE_DIR, else ~/.cache/minillm)")
    tiers.add_argument("--page-tokens", type=_positive_int, default=64, help="tokens per KV page (default 64)")
    tiers.add_argument("--no-prefix-cache", action="store_true", help="neither read nor write cached prompt pages")


def _load(args: argparse.Namespace) -> minillm.LLM:
    return minillm.load(args.model, hbm=args.hbm, dram=args.dram, ssd=args.ssd, cache_dir=args.cache_dir,
                        page_tokens=args.page_tokens, prefix_cache=not args.no_prefix_cache, hbm_kv=args.hbm_kv,
                        backend=getattr(args, "backend", "numba"), threads=getattr(args, "threads", None),
                        draft_vocab=getattr(args, "draft_vocab", None))


def final_stats(model: minillm.LLM) -> dict:
    """Merge this generation's counters over the last snapshot of the tiers: the --stats object."""
    return {**model.last_snapshot, **model.last_stats.to_dict()}


def cmd_generate(args: argparse.Namespace) -> int:
    model = _load(args)
    every = args.stats_every

    def report(snapshot: dict) -> None:
        if every and snapshot["generation"]["generated_tokens"] % every == 0:
            print(json.dumps(snapshot), file=sys.stderr, flush=True)

    with _tracing(model, args):
        pieces = model.generate(args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                                speculative=args.speculative, draft_tokens=args.draft_tokens, on_snapshot=report)
        # The first piece comes once every argument and the prompt are checked, so a rejected request
        # prints nothing. Then the prompt is echoed and the continuation reads on from it, as in llama.cpp.
        first = next(pieces, "")
        sys.stdout.write(args.prompt + first)
        sys.stdout.flush()
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    if args.stats:
        stats = final_stats(model)
        stats.pop("generation", None)
        print(json.dumps(stats), file=sys.stderr)
    return 0


@contextlib.contextmanager
def _tracing(model: minillm.LLM, args: argparse.Namespace):
    """Attach a Tracer for --trace / --trace-file around the generation; otherwise do nothing."""
    if args.trace is not None:
        tokens = args.trace
    else:
        tokens = 1 if args.trace_file is not None else 0  # --trace-file alone traces one token
    if tokens == 0:
        yield
        return
    try:
        stream = open(args.trace_file, "w", encoding="utf-8") if args.trace_file is not None else sys.stderr
    except OSError as exc:
        raise MiniLLMError(f"cannot write the trace file {args.trace_file}: {exc.strerror}") from None
    tracer = Tracer(model, stream, tokens)
    tracer.start(args.prompt)
    try:
        yield
    finally:
        tracer.stop()
        if stream is not sys.stderr:
            stream.close()


def cmd_cache(args: argparse.Namespace) -> int:
    directory = args.cache_dir or default_cache_dir()
    if args.action == "clear":
        removed = prefix_cache.clear(directory)
        print(f"removed {removed} files from {directory / 'prefix'}")
        if directory.is_dir():
            stale = remove_stale_spill_files(directory)
            if stale:
                print(f"removed {stale} KV spill files left by killed runs from {directory}")
            folders = kernels.remove_cache_folders(directory)
            if folders:
                print(f"removed {folders} compiled-kernel folders from {directory}; the next run compiles again")
        return 0
    rows = prefix_cache.list_entries(directory)
    if not rows:
        print(f"the prefix cache in {directory / 'prefix'} is empty")
    for row in rows:
        print(f"model {row['model']}: {row['pages']} pages, {format_size(row['bytes'])}")
    current = kernels.cache_folder_name()
    for folder in kernels.cache_folders(directory):
        size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
        note = "this version" if folder.name == current else "older kernel sources: `minillm cache clear` removes it"
        print(f"compiled kernels {folder.name}: {format_size(size)} ({note})")
    return 0


def cmd_perplexity(args: argparse.Namespace) -> int:
    model = _load(args)
    texts = []
    for path in args.files:
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise MiniLLMError(f"cannot read text file {path}: {exc}") from None
    result = perplexity(model, texts, context=args.context)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(f"tokens scored: {result.tokens}\nmean loss:     {result.mean_loss:.4f} nats/token\n"
              f"perplexity:    {result.perplexity:.3f}")
    return 0


def cmd_tui(args: argparse.Namespace) -> int:
    from tui.app import run_app  # imported here so that the engine and other commands never load textual

    return run_app(_load(args))


def _stop_on_sigterm(signum, frame) -> None:
    """End the run as Ctrl+C does, so that cleanup such as deleting the spill file runs."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    handlers = {"generate": cmd_generate, "perplexity": cmd_perplexity, "cache": cmd_cache, "tui": cmd_tui,
                kv_calc_cli.COMMAND: kv_calc_cli.run}
    try:
        return handlers[args.command](args)
    except MiniLLMError as exc:
        print(f"minillm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `minillm generate ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
