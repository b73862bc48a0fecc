"""The training loop behind tools/train.py: optimisation, validation, checkpoints and metrics."""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from minillm.model.engram_hash import compress_vocabulary
from tools.torch_model import DeepseekV3LM, ModelConfig
from tools.train_data import TokenStream, make_batch, validation_starts

logger = logging.getLogger("train")


@dataclass
class TrainingOptions:
    """Settings of one run, taken from the tools/train.py command line (see its --help)."""

    seq_len: int
    batch_size: int
    optimizer: str
    lr: float
    min_lr_ratio: float
    warmup_steps: int
    weight_decay: float
    grad_clip: float
    mtp_weight: float
    bias_update_rate: float
    precision: str
    seed: int
    max_steps: int | None
    time_budget_seconds: float | None
    log_every: int
    eval_every_seconds: float
    eval_windows: int
    checkpoint_seconds: float
    engram_lr_scale: float = 1.0

    @classmethod
    def from_args(cls, args) -> "TrainingOptions":
        step_limits = []
        if args.steps:
            step_limits.append(args.steps)
        if args.tokens:
            step_limits.append(math.ceil(args.tokens / (args.batch_size * args.seq_len)))
        return cls(
            seq_len=args.seq_len, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
            min_lr_ratio=args.min_lr_ratio, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
            grad_clip=args.grad_clip, mtp_weight=args.mtp_weight, bias_update_rate=args.bias_update_rate,
            precision=args.precision, seed=args.seed, max_steps=min(step_limits) if step_limits else None,
            time_budget_seconds=args.time_budget_minutes * 60 if args.time_budget_minutes else None,
            log_every=args.log_every, eval_every_seconds=args.eval_every_minutes * 60,
            eval_windows=args.eval_windows, checkpoint_seconds=args.checkpoint_minutes * 60,
            engram_lr_scale=args.engram_lr_scale,
        )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(device: torch.device) -> dict:
    """Return the platform, CPU, thread count and torch device, for metrics.json."""
    info = {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


class Trainer:
    """Owns the model, optimizers, data sampling and run state of one training run."""

    def __init__(self, config: ModelConfig, options: TrainingOptions, device: torch.device,
                 train_stream: TokenStream, validation_stream: TokenStream, run_dir: Path,
                 tokenizer_dir: Path) -> None:
        self.options = options
        self.tokenizer_dir = tokenizer_dir
        self.device = device
        self.train_stream = train_stream
        self.validation_stream = validation_stream
        self.run_dir = run_dir
        self.checkpoint_path = run_dir / "checkpoint.pt"

        torch.manual_seed(options.seed)
        self.rng = np.random.default_rng(options.seed)
        self.model = DeepseekV3LM(config)
        if config.engram:
            self.model.set_engram_vocabulary(compress_vocabulary(Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))))
        self.model.to(device)
        self.optimizers = self._build_optimizers()
        self.train_window_starts = train_stream.window_starts(options.seq_len + 1)
        self.eval_window_starts = validation_starts(validation_stream, options.seq_len, options.eval_windows)

        self.step = 0
        self.tokens_seen = 0
        self.train_seconds = 0.0
        self.history: list[dict] = []
        self.book_names: dict[str, list[str]] = {}

    def _build_optimizers(self) -> list[torch.optim.Optimizer]:
        """Return the optimizers: Muon for hidden-layer matrices (if chosen), AdamW for everything else.

        Embedding, output head, Engram tables and router stay on AdamW because Muon's orthogonalised update
        suits hidden linear maps, not lookup tables or the 8-row router.
        """
        options = self.options
        muon_params, decay_params, no_decay_params, engram_tables = [], [], [], []
        for name, param in self.model.named_parameters():
            is_table = "embed_tokens" in name or "lm_head" in name or "engram.embedding" in name
            is_hidden_matrix = param.ndim == 2 and not is_table
            is_router = name.endswith("mlp.gate.weight")
            if "engram.embedding" in name:
                engram_tables.append(param)
            elif options.optimizer == "muon" and is_hidden_matrix and not is_router:
                muon_params.append(param)
            elif param.ndim == 2:
                decay_params.append(param)
            else:
                no_decay_params.append(param)

        fused = self.device.type == "cuda"
        optimizers: list[torch.optim.Optimizer] = [
            torch.optim.AdamW(
                [{"params": decay_params, "weight_decay": options.weight_decay},
                 {"params": no_decay_params, "weight_decay": 0.0},
                 {"params": engram_tables, "weight_decay": options.weight_decay,
                  "lr": options.lr * options.engram_lr_scale}],
                lr=options.lr, betas=(0.9, 0.95), fused=fused,
            )
        ]
        if muon_params:
            # match_rms_adamw scales Muon's step to AdamW's typical update size, so one --lr serves both.
            optimizers.append(
                torch.optim.Muon(muon_params, lr=options.lr, weight_decay=options.weight_decay,
                                 adjust_lr_fn="match_rms_adamw")
            )
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["initial_lr"] = group["lr"]
        return optimizers

    def progress(self) -> float:
        """Fraction of the training length done, by steps or wall time, whichever is further."""
        fractions = [0.0]
        if self.options.max_steps:
            fractions.append(self.step / self.options.max_steps)
        if self.options.time_budget_seconds:
            fractions.append(self.train_seconds / self.options.time_budget_seconds)
        return max(fractions)

    def lr_factor(self) -> float:
        options = self.options
        if self.step < options.warmup_steps:
            return (self.step + 1) / options.warmup_steps
        cosine = 0.5 * (1 + math.cos(math.pi * min(self.progress(), 1.0)))
        return options.min_lr_ratio + (1 - options.min_lr_ratio) * cosine

    def _autocast(self):
        enabled = self.options.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def compute_losses(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run one batch [B, L + 2]; return main/MTP cross-entropy, accuracies and balance loss."""
        length = self.options.seq_len
        inputs, targets, mtp_targets = batch[:, :length], batch[:, 1:length + 1], batch[:, 2:length + 2]
        with self._autocast():
            out = self.model(inputs, next_ids=targets)
        logits = out["logits"].float()
        losses = {
            "main": F.cross_entropy(logits.flatten(0, 1), targets.flatten()),
            "main_accuracy": (logits.argmax(-1) == targets).float().mean(),
            "balance": self.model.balance_loss().to(logits.device),
        }
        if "mtp_logits" in out:
            mtp_logits = out["mtp_logits"].float()
            losses["mtp"] = F.cross_entropy(mtp_logits.flatten(0, 1), mtp_targets.flatten())
            losses["mtp_accuracy"] = (mtp_logits.argmax(-1) == mtp_targets).float().mean()
        return losses

    def train_step(self) -> dict[str, float]:
        options = self.options
        self.model.train()
        for layer in self.model.moe_layers():
            layer.reset_statistics()

        starts = self.rng.choice(self.train_window_starts, size=options.batch_size)
        batch = torch.from_numpy(make_batch(self.train_stream, starts, options.seq_len, self.model.config.bos_token_id))
        losses = self.compute_losses(batch.to(self.device))
        total = losses["main"] + losses["balance"]
        if "mtp" in losses:
            total = total + options.mtp_weight * losses["mtp"]

        factor = self.lr_factor()
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
            optimizer.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), options.grad_clip)
        for optimizer in self.optimizers:
            optimizer.step()
        for layer in self.model.moe_layers():
            layer.update_bias(options.bias_update_rate)

        self.step += 1
        self.tokens_seen += options.batch_size * options.seq_len
        values = {name: float(value.detach()) for name, value in losses.items()}
        values.update(total=float(total.detach()), grad_norm=float(grad_norm), lr=options.lr * factor)
        return values

    @torch.no_grad()
    def evaluate(self, starts: np.ndarray) -> dict:
        """Return mean validation losses, accuracies and per-layer expert load over windows ``starts``."""
        self.model.eval()
        for layer in self.model.moe_layers():
            layer.reset_statistics()
        sums: dict[str, float] = {}
        count = 0
        for begin in range(0, len(starts), self.options.batch_size):
            chunk = starts[begin:begin + self.options.batch_size]
            batch = make_batch(self.validation_stream, chunk, self.options.seq_len, self.model.config.bos_token_id)
            losses = self.compute_losses(torch.from_numpy(batch).to(self.device))
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + float(value) * len(chunk)
            count += len(chunk)

        result = {f"val_{name}": value / count for name, value in sums.items() if name != "balance"}
        result["val_perplexity"] = math.exp(result["val_main"])
        result["val_tokens"] = count * self.options.seq_len
        result["expert_load"] = []
        for name, layer in self.model.named_moe_layers():
            load = layer.expert_load.float()
            result["expert_load"].append({
                "layer": name,
                "max_over_mean": float(load.max() / load.mean()),
                "min_over_mean": float(load.min() / load.mean()),
                "bias_range": [float(layer.gate.e_score_correction_bias.min()),
                               float(layer.gate.e_score_correction_bias.max())],
            })
        return result

    @torch.no_grad()
    def sample_text(self, prompt: str, max_new_tokens: int, temperature: float = 0.8) -> str:
        """Sample a continuation of ``prompt`` (top-k 40, fixed seed), recomputing the full prefix each step."""
        tokenizer = Tokenizer.from_file(str(self.tokenizer_dir / "tokenizer.json"))
        ids = tokenizer.encode(prompt).ids
        generator = torch.Generator().manual_seed(0)
        self.model.eval()
        for _ in range(max_new_tokens):
            context = torch.tensor([ids[-self.options.seq_len:]], device=self.device)
            with self._autocast():
                logits = self.model(context)["logits"][0, -1].float().cpu()
            top = torch.topk(logits / temperature, 40)
            choice = torch.multinomial(top.values.softmax(-1), 1, generator=generator)
            next_id = int(top.indices[choice])
            if next_id == self.model.config.eos_token_id:
                break
            ids.append(next_id)
        return tokenizer.decode(ids, skip_special_tokens=True)

    def train(self) -> None:
        """Run steps until the step, token or time limit; validate, log and checkpoint on the way."""
        options = self.options
        last_eval = last_checkpoint = self.train_seconds
        window_start, window_tokens = time.perf_counter(), 0
        logger.info("training from step %d, %d parameters", self.step, sum(p.numel() for p in self.model.parameters()))

        while self.progress() < 1.0:
            started = time.perf_counter()
            values = self.train_step()
            self.train_seconds += time.perf_counter() - started
            window_tokens += options.batch_size * options.seq_len

            if self.step % options.log_every == 0:
                now = time.perf_counter()
                tokens_per_second = window_tokens / (now - window_start)
                window_start, window_tokens = now, 0
                remaining = self.train_seconds * (1 - self.progress()) / max(self.progress(), 1e-9)
                logger.info(
                    "step %d | loss %.3f (main %.3f, mtp %.3f, balance %.5f) | lr %.2e | %.0f tok/s | %s elapsed | ETA %s",
                    self.step, values["total"], values["main"], values.get("mtp", float("nan")), values["balance"],
                    values["lr"], tokens_per_second, _format_duration(self.train_seconds), _format_duration(remaining),
                )
            if self.train_seconds - last_eval >= options.eval_every_seconds:
                self._log_validation()
                last_eval = self.train_seconds
                window_start, window_tokens = time.perf_counter(), 0
            if self.train_seconds - last_checkpoint >= options.checkpoint_seconds:
                self.save_checkpoint()
                last_checkpoint = self.train_seconds
                window_start, window_tokens = time.perf_counter(), 0
        self.save_checkpoint()

    def _log_validation(self) -> None:
        result = self.evaluate(self.eval_window_starts)
        record = {"step": self.step, "tokens_seen": self.tokens_seen, "train_seconds": round(self.train_seconds, 1)}
        record.update({key: value for key, value in result.items() if key != "expert_load"})
        record["max_expert_load_over_mean"] = max(item["max_over_mean"] for item in result["expert_load"])
        self.history.append(record)
        with open(self.run_dir / "log.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        logger.info(
            "validation at step %d: loss %.3f (perplexity %.1f), MTP accuracy %.3f, max expert load / mean %.2f",
            self.step, record["val_main"], record["val_perplexity"], record.get("val_mtp_accuracy", float("nan")),
            record["max_expert_load_over_mean"],
        )
        logger.info("sample: %r", self.sample_text("Once upon a time", max_new_tokens=40))

    def save_checkpoint(self) -> None:
        """Write checkpoint.pt atomically (write a temporary file, then rename)."""
        state = {
            "model_config": self.model.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizers": [optimizer.state_dict() for optimizer in self.optimizers],
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "train_seconds": self.train_seconds,
            "numpy_rng": json.dumps(self.rng.bit_generator.state),
            "torch_rng": torch.get_rng_state(),
            "history": json.dumps(self.history),
        }
        temporary = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, temporary)
        os.replace(temporary, self.checkpoint_path)
        logger.info("saved checkpoint at step %d to %s", self.step, self.checkpoint_path)

    def load_checkpoint(self) -> None:
        """Restore model, optimizers and run state from checkpoint.pt; log and start fresh if absent."""
        if not self.checkpoint_path.exists():
            logger.info("no checkpoint at %s; starting a new run", self.checkpoint_path)
            return
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        if state["model_config"] != self.model.config.to_dict():
            raise ValueError(
                f"checkpoint {self.checkpoint_path} was written for a different model config; "
                "use the same size flags as the original run or a new --out folder"
            )
        self.model.load_state_dict(state["model"])
        for optimizer, optimizer_state in zip(self.optimizers, state["optimizers"]):
            optimizer.load_state_dict(optimizer_state)
        self.step = state["step"]
        self.tokens_seen = state["tokens_seen"]
        self.train_seconds = state["train_seconds"]
        self.rng.bit_generator.state = json.loads(state["numpy_rng"])
        torch.set_rng_state(state["torch_rng"].cpu())
        self.history = json.loads(state["history"])
        logger.info("resumed from %s at step %d", self.checkpoint_path, self.step)

    def summary(self, final: dict) -> dict:
        """Return the metrics.json body: final validation, run totals and validation history."""
        total_params = sum(p.numel() for p in self.model.parameters())
        return {
            **final,
            "steps": self.step,
            "tokens_seen": self.tokens_seen,
            "train_seconds": round(self.train_seconds, 1),
            "tokens_per_second": round(self.tokens_seen / max(self.train_seconds, 1e-9), 1),
            "parameters": total_params,
            "history": self.history,
        }
