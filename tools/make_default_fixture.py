"""Record transformers' outputs for the baseline model in weights/, for CI to compare without torch.

transformers' DeepseekV3ForCausalLM loads the exported directory (it skips the MTP layer) in
float32; the script stores the prompt ids, full logits and a 32-token greedy continuation in
tests/fixtures/default_model.npz. It records the baseline model (no Engram: transformers has none);
rerun it whenever those weights change.
Needs the `ref` extra (torch, transformers).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT = 'Once upon a time, in a little house at the edge of the wood, "Where are you going?" asked'


def main() -> None:
    import torch
    from tokenizers import Tokenizer
    from transformers import DeepseekV3ForCausalLM

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "weights" / "minillm-tiny-baseline")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "default_model.npz")
    args = parser.parse_args()

    config = json.loads((args.model / "config.json").read_text())
    tokenizer = Tokenizer.from_file(str(args.model / "tokenizer.json"))
    ids = [config["bos_token_id"]] + tokenizer.encode(PROMPT, add_special_tokens=False).ids
    model = DeepseekV3ForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager").eval()
    prompt = torch.tensor([ids])
    with torch.no_grad():
        logits = model(prompt).logits[0].numpy()
        continuation = model.generate(prompt, max_new_tokens=32, do_sample=False, eos_token_id=None,
                                      pad_token_id=config["eos_token_id"])[0, len(ids):].numpy()
    np.savez_compressed(args.out, prompt_ids=np.array(ids, dtype=np.int64), logits=logits.astype(np.float32),
                        greedy_ids=continuation.astype(np.int64))
    print(f"wrote {args.out}: {len(ids)} prompt tokens, greedy {tokenizer.decode(continuation.tolist())!r}")


if __name__ == "__main__":
    main()
