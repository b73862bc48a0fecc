"""Train the default minillm model (a tiny DeepSeek-V3-style MoE with MTP) on a folder of books.

Usage::

    python tools/train.py --corpus DIR --tokenizer runs/tokenizer --out runs/NAME \\
        --time-budget-minutes 55 --export weights/minillm-tiny

The run folder receives the cached token ids (data/), ``checkpoint.pt``, ``metrics.json``,
``log.jsonl`` (one JSON line per validation) and ``train.txt`` (a copy of the log). The
checkpoint is written every ``--checkpoint-minutes`` and at the end, and ``--resume``
continues from it. With ``--export`` the final model is written as
a Hugging Face folder (see tools/export.py).

Training length is set by ``--steps``, ``--tokens`` or ``--time-budget-minutes``, whichever ends
first. The learning rate warms up linearly, then follows a cosine to ``--min-lr-ratio`` of the
peak over that length. With a time budget, progress is measured in wall time, so the schedule
anneals on time even when the machine is slower than expected. The step count then varies
between runs, while the seed still fixes the initialisation and the data order.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

# By default PyTorch's OpenMP threads busy-wait between parallel regions. On a 2-core machine
# shared with one other busy process, that made a step of the default model (batch 16 x 256,
# bf16, Muon) 26x slower: 42.6 s instead of 1.6 s with passive waiting. It must be set before
# torch is imported, and an OMP_WAIT_POLICY from the environment takes precedence.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.corpus import read_books, split_books  # noqa: E402
from tools.export import export_model  # noqa: E402
from tools.torch_model import ModelConfig  # noqa: E402
from tools.train_data import load_or_build_streams, validation_starts  # noqa: E402
from tools.train_loop import Trainer, TrainingOptions, describe_machine  # noqa: E402

logger = logging.getLogger("train")

# Named model sizes. "tiny" is the default minillm model; "test" is for unit tests and smoke runs.
MODEL_SIZES: dict[str, dict] = {
    "tiny": dict(
        hidden_size=256, intermediate_size=768, moe_intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, q_lora_rank=128, kv_lora_rank=64, qk_nope_head_dim=32,
        qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=8, n_group=4, topk_group=2,
        num_experts_per_tok=2,
    ),
    "test": dict(
        hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16,
        qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=8, n_group=4, topk_group=2,
        num_experts_per_tok=2,
    ),
}
# Engram defaults for --engram: one Engram layer before the second decoder layer's attention,
# bigram and trigram tables with 4 heads each, 32-wide rows (128 per order), about 16k rows per
# head: 4.1M parameters (8.2 MB in bf16). A first run with 36k rows per head and the full
# learning rate on the tables memorised the training books. Around step 1,000 its training loss
# was 0.4-0.7 nats below the baseline's, while its validation perplexity was 73.4 against the
# baseline's 61.9 to 65.6. Smaller tables and --engram-lr-scale 0.2 give each row more n-grams
# to average over and move rarely seen rows less.
# The padding id is the end-of-text token: positions before a sequence's start read as a
# document boundary.
ENGRAM_DEFAULTS = dict(
    layer_ids=[1], max_ngram_size=3, n_head_per_ngram=4, n_embed_per_ngram=128,
    engram_vocab_size=[16000, 16000], seed=0, kernel_size=4,
)
# Command-line flags that override single entries of the named size.
SIZE_FLAGS = (
    "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers", "num_attention_heads",
    "q_lora_rank", "kv_lora_rank", "n_routed_experts", "n_group", "topk_group", "num_experts_per_tok",
)


def build_model_config(args: argparse.Namespace, vocab_size: int) -> ModelConfig:
    """Combine the named size, flag overrides, the vocabulary and YaRN settings for ``--seq-len``."""
    values = dict(MODEL_SIZES[args.size])
    for name in SIZE_FLAGS:
        value = getattr(args, name)
        if value is not None:
            values[name] = value

    # The model trains at seq_len positions; YaRN stretches RoPE to max_position_embeddings.
    max_positions = max(args.max_position_embeddings, args.seq_len)
    values["rope_scaling"] = {
        "type": "yarn",
        "rope_type": "yarn",
        "factor": max_positions / args.seq_len,
        "original_max_position_embeddings": args.seq_len,
        "beta_fast": 32,
        "beta_slow": 1,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
    }
    engram = None
    if args.engram:
        engram = dict(ENGRAM_DEFAULTS, pad_id=ModelConfig.eos_token_id)
        if args.engram_layers is not None:
            engram["layer_ids"] = args.engram_layers
        if args.engram_table_size is not None:
            engram["engram_vocab_size"] = [args.engram_table_size] * (engram["max_ngram_size"] - 1)
    return ModelConfig(
        vocab_size=vocab_size,
        engram=engram,
        max_position_embeddings=max_positions,
        balance_loss_alpha=args.balance_loss_alpha,
        **values,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="folder of *.txt books")
    parser.add_argument("--tokenizer", type=Path, required=True, help="folder with tokenizer.json (tools/train_tokenizer.py)")
    parser.add_argument("--out", type=Path, required=True, help="run folder for checkpoints, logs and metrics")
    parser.add_argument("--export", type=Path, default=None, help="write the final model here as a Hugging Face folder")
    parser.add_argument("--export-dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")

    size = parser.add_argument_group("model size")
    size.add_argument("--size", choices=sorted(MODEL_SIZES), default="tiny", help="named model size")
    for name in SIZE_FLAGS:
        size.add_argument("--" + name.replace("_", "-"), type=int, default=None, help=f"override {name}")
    size.add_argument("--engram", action="store_true", help="add Engram n-gram memory (ENGRAM_DEFAULTS)")
    size.add_argument("--engram-layers", type=int, nargs="+", default=None, help="decoder layers that get Engram")
    size.add_argument("--engram-table-size", type=int, default=None, help="base rows per Engram hash table")
    size.add_argument("--max-position-embeddings", type=int, default=16384, help="context length after YaRN scaling")

    length = parser.add_argument_group("training length (the first limit reached ends training)")
    length.add_argument("--steps", type=int, default=None, help="optimizer steps")
    length.add_argument("--tokens", type=float, default=None, help="training tokens (batch x seq-len per step)")
    length.add_argument("--time-budget-minutes", type=float, default=None, help="wall-clock minutes of training")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--seq-len", type=int, default=256, help="tokens per training sequence")
    optim.add_argument("--batch-size", type=int, default=16, help="sequences per step")
    optim.add_argument("--optimizer", choices=["muon", "adamw"], default="muon",
                       help="muon: torch.optim.Muon for hidden 2-D matrices, AdamW for the rest")
    optim.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    optim.add_argument("--min-lr-ratio", type=float, default=0.1, help="final learning rate as a fraction of --lr")
    optim.add_argument("--warmup-steps", type=int, default=100)
    optim.add_argument("--weight-decay", type=float, default=0.1)
    optim.add_argument("--grad-clip", type=float, default=1.0, help="maximum global gradient norm")
    optim.add_argument("--engram-lr-scale", type=float, default=0.2,
                       help="learning rate of the Engram tables as a fraction of --lr")
    optim.add_argument("--mtp-weight", type=float, default=0.3, help="weight lambda of the MTP loss")
    optim.add_argument("--balance-loss-alpha", type=float, default=1e-4, help="sequence-wise balance loss weight")
    optim.add_argument("--bias-update-rate", type=float, default=1e-3,
                       help="gamma of the auxiliary-loss-free routing bias update")
    optim.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                       help="bf16: autocast matrix products to bfloat16 (weights and optimizer stay fp32)")
    optim.add_argument("--seed", type=int, default=1234)

    run = parser.add_argument_group("logging and evaluation")
    run.add_argument("--log-every", type=int, default=10, help="steps between progress lines")
    run.add_argument("--eval-every-minutes", type=float, default=5.0, help="minutes between validations")
    run.add_argument("--eval-windows", type=int, default=64, help="validation windows per periodic validation")
    run.add_argument("--checkpoint-minutes", type=float, default=10.0, help="minutes between checkpoints")
    run.add_argument("--validation-books", nargs="*", default=None, help="book file names to hold out")
    run.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    run.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    args = parser.parse_args(argv)

    if args.steps is None and args.tokens is None and args.time_budget_minutes is None:
        parser.error("set at least one of --steps, --tokens, --time-budget-minutes")
    return args


def build_trainer(args: argparse.Namespace) -> Trainer:
    """Read and tokenize the corpus (or its cache) and return a Trainer for ``args``.

    The trainer starts from fresh weights; with ``args.resume`` it loads OUT/checkpoint.pt if present.
    """
    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    train_books, validation_books = split_books(read_books(args.corpus), args.validation_books)
    tokenizer_path = args.tokenizer / "tokenizer.json"
    train_stream, validation_stream = load_or_build_streams(
        tokenizer_path, train_books, validation_books, args.out / "data"
    )
    vocab_size = Tokenizer.from_file(str(tokenizer_path)).get_vocab_size()

    config = build_model_config(args, vocab_size)
    options = TrainingOptions.from_args(args)
    trainer = Trainer(config, options, device, train_stream, validation_stream, args.out, args.tokenizer)
    trainer.book_names = {"train": [book.name for book in train_books],
                          "validation": [book.name for book in validation_books]}
    if args.resume:
        trainer.load_checkpoint()
    return trainer


def run(args: argparse.Namespace) -> dict:
    """Train, validate on all held-out windows, write metrics.json, export; return the metrics."""
    process_start = time.perf_counter()
    trainer = build_trainer(args)
    trainer.train()

    final = trainer.evaluate(validation_starts(trainer.validation_stream, args.seq_len, None))
    sample = trainer.sample_text("Once upon a time", max_new_tokens=60)
    logger.info("final validation: %s", json.dumps(final))
    logger.info("sample: %r", sample)

    metrics = trainer.summary(final)
    metrics.update(
        validation_books=trainer.book_names["validation"],
        train_books=len(trainer.book_names["train"]),
        sample_text=sample,
        machine=describe_machine(trainer.device),
        model_config=trainer.model.config.to_dict(),
        arguments={key: str(value) for key, value in vars(args).items()},
        # Wall time of this process (data loading, training, validation); a resumed run counts
        # only its own part here, while train_seconds covers all parts.
        wall_seconds=round(time.perf_counter() - process_start, 1),
    )
    if args.export is not None:
        metrics["export_dir"] = str(args.export)

    metrics_path = args.out / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    if args.export is not None:
        export_model(
            trainer.model.cpu().float(),
            args.tokenizer,
            args.export,
            dtype=getattr(torch, args.export_dtype),
            extra_files={"training_metrics.json": metrics_path},
        )
    logger.info("wrote %s", metrics_path)
    return metrics


def setup_run_logging(out: Path) -> logging.Handler:
    """Log to stderr and to out/train.txt, a copy of the log in the run folder also when stderr is
    not redirected. Returns the file handler, for the caller to remove when the run ends."""
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    file_handler = logging.FileHandler(out / "train.txt")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(file_handler)
    return file_handler


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    file_handler = setup_run_logging(args.out)
    try:
        run(args)
    finally:
        logging.getLogger().removeHandler(file_handler)
        file_handler.close()


if __name__ == "__main__":
    main()
