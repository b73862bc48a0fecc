"""Compare the engine's validation perplexity with the PyTorch reference on the same windows.

The reference is transformers' DeepseekV3ForCausalLM loaded from the same exported directory, run
in float32. Both score identical windows of the held-out books (minillm.engine.perplexity's
windowing: BOS plus up to context - 1 tokens). Needs the `ref` extra (torch, transformers).

Usage: python tools/check_perplexity.py [--model DIR] [--windows N] FILE...
       python tools/check_perplexity.py [--model DIR] --run RUN_DIR
The second form scores the training run's own validation windows (RUN_DIR/data) with the engine
and prints the result beside the validation perplexity that the training tool reported.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import minillm  # noqa: E402
from minillm.engine.perplexity import default_context, text_windows, window_loss  # noqa: E402


def score_training_windows(model, run_dir: Path) -> dict:
    """Engine perplexity on the training tool's final validation windows: BOS + seq_len - 1 tokens
    from each packed window start, predicting the next seq_len tokens."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_data import TokenStream, validation_starts

    metrics = json.loads((run_dir / "metrics.json").read_text())
    seq_len = int(metrics["arguments"]["seq_len"])
    stream = TokenStream(np.load(run_dir / "data" / "validation_ids.npy"),
                         np.load(run_dir / "data" / "validation_starts.npy"))
    loss, tokens = 0.0, 0
    for start in validation_starts(stream, seq_len, None):
        window = np.concatenate([[model.config.bos_token_id], stream.ids[start : start + seq_len]]).astype(np.int64)
        logits = model.logits(window[:seq_len])
        loss += window_loss(logits, window[1 : seq_len + 1])
        tokens += seq_len
    return {"tokens": tokens, "engine_perplexity": math.exp(loss / tokens),
            "training_tool_perplexity": metrics["val_perplexity"],
            "relative_difference": abs(math.exp(loss / tokens) / metrics["val_perplexity"] - 1)}


def main() -> None:
    if "--run" in sys.argv:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--model", type=Path, default=minillm.DEFAULT_MODEL_DIR)
        parser.add_argument("--run", type=Path, required=True)
        args = parser.parse_args()
        print(json.dumps(score_training_windows(minillm.load(args.model, prefix_cache=False), args.run), indent=2))
        return

    import torch
    from transformers import DeepseekV3ForCausalLM

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=minillm.DEFAULT_MODEL_DIR)
    parser.add_argument("--windows", type=int, default=200, help="windows to score (spread over the files)")
    parser.add_argument("files", type=Path, nargs="+")
    args = parser.parse_args()

    model = minillm.load(args.model, prefix_cache=False)
    reference = DeepseekV3ForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    texts = [path.read_text(encoding="utf-8") for path in args.files]
    windows = list(text_windows(model.tokenizer, texts, default_context(model.config)))
    chosen = [windows[i] for i in np.linspace(0, len(windows) - 1, min(args.windows, len(windows))).astype(int)]

    engine_loss = reference_loss = 0.0
    tokens = 0
    max_logit_diff = 0.0
    for window in chosen:
        ours = model.logits(window)
        with torch.no_grad():
            theirs = reference(torch.from_numpy(window)[None]).logits[0].numpy()
        max_logit_diff = max(max_logit_diff, float(np.abs(ours - theirs).max()))
        engine_loss += window_loss(ours[:-1], window[1:])
        reference_loss += window_loss(theirs[:-1], window[1:])
        tokens += window.size - 1
    result = {"windows": len(chosen), "tokens": tokens,
              "engine_perplexity": math.exp(engine_loss / tokens),
              "reference_perplexity": math.exp(reference_loss / tokens),
              "max_logit_difference": max_logit_diff}
    result["relative_difference"] = abs(result["engine_perplexity"] / result["reference_perplexity"] - 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
