"""Fine-tune only the MTP module of an exported checkpoint to agree with its own main model.

Usage::

    python tools/train_mtp.py --model weights/minillm-tiny --corpus DIR --out runs/minillm-tiny-mtp \\
        --time-budget-minutes 33 --export weights/minillm-tiny

The engine verifies MTP drafts against the main model's greedy token, so the module is trained to
predict the main model's distribution, not the text. At position i the module reads the main
model's final hidden state at i and the embedding of token i+1. Its target is the main model's
softmax at position i+1, which predicts token i+2. The loss is the soft cross-entropy to that
distribution, which has the same gradient as the KL divergence. ``--hard-weight`` mixes in the
usual cross-entropy on the true token i+2.

The default ``--hard-weight`` is 0. On the held-out books the main model's greedy token is the
true token at only about a quarter of positions, so hard labels pull the drafts away from the
tokens the engine accepts. In 2.5-minute trials on the default model, the agreement rate on the
held-out books reached 46.9% with ``--hard-weight 0`` and 45.7% with 0.5.

The embedding, the main layers, Engram, the final norm and ``lm_head`` are frozen and never
handed to the optimizer, and only the MTP router gets the trainer's bias update. The exported
main-model tensors are therefore identical to the input checkpoint's, provided
``--export-dtype`` is the checkpoint's storage dtype. The MTP module shares the embedding and
head with the main model, as in tools/train.py, and tools/export.py writes the MTP layer's
copies of both from the frozen originals.

The log reports the agreement rate on held-out windows: the fraction of positions where the MTP
argmax equals the main model's argmax at the next position.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

# Passive OpenMP waiting, for the reason given in tools/train.py. It must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors import safe_open  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.corpus import read_books, split_books  # noqa: E402
from tools.export import TOKENIZER_FILES, export_model, hf_state_dict  # noqa: E402
from tools.torch_model import DeepseekV3LM, ModelConfig  # noqa: E402
from tools.train import setup_run_logging  # noqa: E402
from tools.train_data import load_or_build_streams, make_batch, validation_starts  # noqa: E402

logger = logging.getLogger("train_mtp")


def load_exported_model(model_dir: Path) -> DeepseekV3LM:
    """Build a float32 DeepseekV3LM from a folder written by tools/export.py.

    Raises ValueError if the MTP layer's copies of the embedding or head differ from the main
    model's, because the training model ties them and would silently drop the copies.
    """
    hf = json.loads((model_dir / "config.json").read_text())
    names = {field.name for field in dataclasses.fields(ModelConfig)}
    model = DeepseekV3LM(ModelConfig(**{key: value for key, value in hf.items() if key in names}))

    # hf_state_dict's tensors share storage with the model's parameters and buffers, so copying
    # into them loads the model. The MTP layer's embedding and head entries are the main model's
    # tensor objects again, so they are compared instead of loaded.
    loaded: set[int] = set()
    with safe_open(model_dir / "model.safetensors", framework="pt") as handle, torch.no_grad():
        stored = set(handle.keys())
        for name, target in hf_state_dict(model).items():
            if name not in stored:
                raise ValueError(f"tensor {name} is missing from {model_dir}/model.safetensors; "
                                 "export the model with tools/export.py")
            value = handle.get_tensor(name).to(target.dtype)
            if id(target) in loaded:
                if not torch.equal(target, value):
                    raise ValueError(f"{name} differs from the main model's tensor, "
                                     "but this tool can only train tied copies")
                continue
            target.copy_(value)
            loaded.add(id(target))
    return model


def freeze_main_model(model: DeepseekV3LM) -> list[torch.nn.Parameter]:
    """Freeze every parameter outside the MTP module and return the MTP module's parameters."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    trainable = list(model.mtp.parameters())
    for parameter in trainable:
        parameter.requires_grad_(True)
    return trainable


def mtp_losses(model: DeepseekV3LM, batch: torch.Tensor, seq_len: int, hard_weight: float,
               autocast: bool) -> dict[str, torch.Tensor]:
    """Return the MTP loss, its soft and hard parts, agreement and accuracy for a batch [B, L + 2].

    Agreement compares the MTP argmax with the main model's argmax at the next position, and
    accuracy compares it with the true token.

    The last MTP position is dropped, because its target would be the main model's output at
    position L, outside the window.
    """
    inputs, next_ids = batch[:, :seq_len], batch[:, 1:seq_len + 1]
    true_ids = batch[:, 2:seq_len + 1]
    with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=autocast):
        with torch.no_grad():
            main = model(inputs)
        cos, sin = model.rope_tables(seq_len, batch.device)
        mtp_hidden = model.mtp[0](model.model.embed_tokens(next_ids), main["hidden"], cos, sin)
        mtp_logits = model.lm_head(mtp_hidden)[:, :-1].float()

    teacher_logits = main["logits"][:, 1:].float()
    log_probs = F.log_softmax(mtp_logits, dim=-1)
    soft = -(F.softmax(teacher_logits, dim=-1) * log_probs).sum(-1).mean()
    hard = F.nll_loss(log_probs.flatten(0, 1), true_ids.flatten())
    loss = (1 - hard_weight) * soft + hard_weight * hard
    moe = model.mtp[0].block.mlp
    if moe.training and moe.balance_loss is not None:
        loss = loss + moe.balance_loss
    drafts = mtp_logits.argmax(-1)
    agreement = (drafts == teacher_logits.argmax(-1)).float().mean()
    accuracy = (drafts == true_ids).float().mean()
    return {"loss": loss, "soft": soft, "hard": hard, "agreement": agreement, "accuracy": accuracy}


@torch.no_grad()
def evaluate(model: DeepseekV3LM, stream, starts: np.ndarray, args: argparse.Namespace) -> dict[str, float]:
    """Return the mean soft loss, hard loss, agreement and accuracy over validation windows ``starts``.

    Validation runs in float32 for any ``--precision``, so the main model's argmax is the
    one the float32 engine computes.
    """
    model.eval()
    sums = {"soft": 0.0, "hard": 0.0, "agreement": 0.0, "accuracy": 0.0}
    for begin in range(0, len(starts), args.batch_size):
        chunk = starts[begin:begin + args.batch_size]
        batch = torch.from_numpy(make_batch(stream, chunk, args.seq_len, model.config.bos_token_id))
        losses = mtp_losses(model, batch, args.seq_len, args.hard_weight, autocast=False)
        for name in sums:
            sums[name] += float(losses[name]) * len(chunk)
    result = {f"val_{name}": value / len(starts) for name, value in sums.items()}
    result["val_windows"] = len(starts)
    return result


def lr_factor(step: int, progress: float, warmup_steps: int, min_ratio: float) -> float:
    """Return the learning-rate multiplier: linear warm-up, then a cosine to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train_step(model: DeepseekV3LM, optimizer: torch.optim.Optimizer, batch: np.ndarray, lr: float,
               args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Run one optimizer step on the MTP module and return the batch's losses."""
    model.eval()
    model.mtp.train()  # the MTP block computes its balance loss in training mode only
    moe = model.mtp[0].block.mlp
    moe.reset_statistics()
    autocast = args.precision == "bf16"
    losses = mtp_losses(model, torch.from_numpy(batch), args.seq_len, args.hard_weight, autocast)

    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    torch.nn.utils.clip_grad_norm_(model.mtp.parameters(), args.grad_clip)
    optimizer.step()
    moe.update_bias(args.bias_update_rate)
    return losses


def train(args: argparse.Namespace) -> dict:
    """Fine-tune the MTP module, validate it before, during and after, export it, return the metrics."""
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)

    model = load_exported_model(args.model)
    optimizer = torch.optim.AdamW(freeze_main_model(model), lr=args.lr, betas=(0.9, 0.95),
                                  weight_decay=args.weight_decay)
    train_books, validation_books = split_books(read_books(args.corpus), args.validation_books)
    train_stream, validation_stream = load_or_build_streams(
        args.model / "tokenizer.json", train_books, validation_books, args.out / "data")
    train_starts = train_stream.window_starts(args.seq_len + 1)
    periodic_starts = validation_starts(validation_stream, args.seq_len, args.eval_windows)
    all_starts = validation_starts(validation_stream, args.seq_len, None)

    before = evaluate(model, validation_stream, all_starts, args)
    logger.info("before training, all %d validation windows: %s", len(all_starts), json.dumps(before))
    history = [{"step": 0, "train_seconds": 0.0, **evaluate(model, validation_stream, periodic_starts, args)}]
    logger.info("validation at step 0: %s", json.dumps(history[-1]))

    step, train_seconds, last_eval = 0, 0.0, 0.0
    budget = args.time_budget_minutes * 60 if args.time_budget_minutes else math.inf
    while step < (args.steps or math.inf) and train_seconds < budget:
        started = time.perf_counter()
        batch = make_batch(train_stream, rng.choice(train_starts, size=args.batch_size), args.seq_len,
                           model.config.bos_token_id)
        progress = max(step / args.steps if args.steps else 0.0, train_seconds / budget)
        factor = lr_factor(step, progress, args.warmup_steps, args.min_lr_ratio)
        losses = train_step(model, optimizer, batch, args.lr * factor, args)
        step += 1
        train_seconds += time.perf_counter() - started

        if step % args.log_every == 0:
            logger.info("step %d | loss %.3f (soft %.3f, hard %.3f) | agreement %.3f | lr %.2e | %.0f s",
                        step, losses["loss"], losses["soft"], losses["hard"], losses["agreement"],
                        args.lr * factor, train_seconds)
        if train_seconds - last_eval >= args.eval_every_minutes * 60:
            last_eval = train_seconds
            history.append({"step": step, "train_seconds": round(train_seconds, 1),
                            **evaluate(model, validation_stream, periodic_starts, args)})
            logger.info("validation at step %d: %s", step, json.dumps(history[-1]))

    after = evaluate(model, validation_stream, all_starts, args)
    logger.info("after %d steps, all %d validation windows: %s", step, len(all_starts), json.dumps(after))
    metrics = {
        "before": before, "after": after, "steps": step, "tokens_seen": step * args.batch_size * args.seq_len,
        "train_seconds": round(train_seconds, 1), "history": history,
        "arguments": {key: str(value) for key, value in vars(args).items()},
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    # export_model copies the tokenizer files into the output folder, which may be --model itself.
    tokenizer_dir = args.out / "tokenizer"
    tokenizer_dir.mkdir(exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(args.model / name, tokenizer_dir / name)
    export_model(model.cpu().float(), tokenizer_dir, args.export, dtype=getattr(torch, args.export_dtype))
    return metrics


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="exported model folder with an MTP layer")
    parser.add_argument("--corpus", type=Path, required=True, help="folder of *.txt books")
    parser.add_argument("--out", type=Path, required=True, help="run folder for the token cache, log and metrics")
    parser.add_argument("--export", type=Path, required=True,
                        help="folder for the fine-tuned model; may be --model itself")
    parser.add_argument("--export-dtype", choices=["bfloat16", "float32"], default="bfloat16",
                        help="storage dtype of the exported matrices; use the input checkpoint's")
    parser.add_argument("--validation-books", nargs="*", default=None, help="book file names to hold out")

    parser.add_argument("--steps", type=int, default=None, help="optimizer steps")
    parser.add_argument("--time-budget-minutes", type=float, default=None, help="wall-clock minutes of training")
    parser.add_argument("--hard-weight", type=float, default=0.0,
                        help="share of the cross-entropy on the true token in the loss, 0 to 1")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    parser.add_argument("--min-lr-ratio", type=float, default=0.1, help="final learning rate as a fraction of --lr")
    parser.add_argument("--warmup-steps", type=int, default=20, help="steps of linear learning-rate warm-up")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    parser.add_argument("--grad-clip", type=float, default=1.0, help="maximum global gradient norm")
    parser.add_argument("--bias-update-rate", type=float, default=1e-3,
                        help="gamma of the MTP router's auxiliary-loss-free bias update")

    parser.add_argument("--seq-len", type=int, default=256, help="tokens per training sequence")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per step")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                        help="bf16: autocast matrix products to bfloat16 (weights stay fp32)")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the training window order")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch")

    parser.add_argument("--log-every", type=int, default=10, help="steps between progress lines")
    parser.add_argument("--eval-every-minutes", type=float, default=5.0, help="minutes between validations")
    parser.add_argument("--eval-windows", type=int, default=64, help="validation windows per periodic validation")
    args = parser.parse_args(argv)

    if args.steps is None and args.time_budget_minutes is None:
        parser.error("set --steps, --time-budget-minutes or both")
    if not 0.0 <= args.hard_weight <= 1.0:
        parser.error(f"--hard-weight {args.hard_weight} is outside 0..1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    file_handler = setup_run_logging(args.out)
    try:
        metrics = train(args)
    finally:
        logging.getLogger().removeHandler(file_handler)
        file_handler.close()
    print(json.dumps({key: metrics[key] for key in ("before", "after", "steps", "tokens_seen", "train_seconds")}))


if __name__ == "__main__":
    main()
