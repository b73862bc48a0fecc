"""The `minillm kv-calc` subcommand: argument parsing and output; the arithmetic is in kv_cache_size()."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import minillm
from minillm.errors import ConfigError
from minillm.kvcalc.presets import PRESETS
from minillm.kvcalc.render import format_preset_table, format_report
from minillm.kvcalc.report import DEFAULT_INDEXER_BYTES, DEFAULT_KV_BYTES, kv_cache_size, preset_reports
from minillm.kvcalc.units import CONTEXT_HELP, KVCalcError, parse_bytes_per_value, parse_token_count

COMMAND = "kv-calc"
DEFAULT_CONTEXT = "1M"

_DESCRIPTION = """\
Compute the KV cache one sequence needs at a context length, per layer type, from a checkpoint's
config.json or a published model config. Context suffixes are decimal: 128k = 128,000 and
1M = 1,000,000 tokens; use 128Ki = 131,072 or 1Mi = 1,048,576 for binary counts.
Sizes are given in bytes and in GiB (2^30 bytes)."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `kv-calc` on the `minillm` subcommand parsers and return its parser.

    Values are parsed in run(), not by argparse, so that a bad value gives one `minillm: error:` line.
    """
    parser = subparsers.add_parser(COMMAND, help="KV cache size of a model at a context length",
                                   description=_DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, metavar="DIR",
                        help="checkpoint directory with a config.json (default: the model in weights/); "
                             "not with --preset or --all-presets")
    parser.add_argument("--preset", default=None, metavar="NAME",
                        help=f"a published model config instead of a checkpoint: {', '.join(PRESETS)}")
    parser.add_argument("--all-presets", action="store_true",
                        help="print one summary row per preset instead of one model's breakdown")
    parser.add_argument("--context", default=DEFAULT_CONTEXT, metavar="N",
                        help=f"context length in tokens: {CONTEXT_HELP} (default {DEFAULT_CONTEXT} = 1,000,000)")
    parser.add_argument("--kv-bytes", default=str(DEFAULT_KV_BYTES), metavar="B",
                        help=f"bytes per cached key, value or latent value: 2 for BF16, 1 for FP8, 0.5 for FP4 "
                             f"(default {DEFAULT_KV_BYTES})")
    parser.add_argument("--indexer-bytes", default=str(DEFAULT_INDEXER_BYTES), metavar="B",
                        help=f"bytes per cached sparse-attention indexer key value (default {DEFAULT_INDEXER_BYTES})")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def run(args: argparse.Namespace) -> int:
    """Print the report that `args` requests and return 0; raise a MiniLLMError for invalid arguments."""
    context = parse_token_count(args.context)
    kv_bytes = parse_bytes_per_value(args.kv_bytes, "--kv-bytes")
    indexer_bytes = parse_bytes_per_value(args.indexer_bytes, "--indexer-bytes")
    chosen = [option for option, value in (("--model", args.model), ("--preset", args.preset),
                                           ("--all-presets", args.all_presets)) if value]
    if len(chosen) > 1:
        raise KVCalcError(f"{' and '.join(chosen)} cannot be combined: give one of --model, --preset, --all-presets")

    if args.all_presets:
        reports = preset_reports(context, kv_bytes, indexer_bytes)
        if args.json:
            print(json.dumps([{"preset": name, **report.to_dict()} for name, report in reports.items()]))
        else:
            print(format_preset_table(reports))
        return 0

    report = kv_cache_size(_model_source(args), context, kv_bytes, indexer_bytes)
    print(json.dumps(report.to_dict()) if args.json else format_report(report))
    return 0


def _model_source(args: argparse.Namespace) -> str | Path:
    if args.preset is not None:
        if args.preset.strip().lower() not in PRESETS:
            raise ConfigError(f"unknown preset {args.preset!r}: choose one of {', '.join(PRESETS)}")
        return args.preset
    if args.model is not None:
        if not args.model.is_dir():
            raise ConfigError(f"model directory not found: {args.model}; give a checkpoint directory "
                              f"that contains config.json")
        return args.model
    default = minillm.DEFAULT_MODEL_DIR
    if not default.is_dir():
        raise ConfigError(f"default model directory not found: {default}; the default model ships in weights/ "
                          f"of a source checkout, so pass --model DIR or --preset NAME")
    return default
