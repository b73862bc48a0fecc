"""Record the PyTorch training model's Engram outputs, for CI to compare the engine without torch.

Builds a small model with one Engram layer (tools/torch_model.py, the "test" size, the default
model's tokenizer). Its Engram weights get a larger scale than training starts from, so that they
change the logits clearly, and every weight is rounded to bfloat16. Writes
tests/fixtures/torch/engram_small/ (outside tests/fixtures/*/, where the transformers fixtures live):

- a Hugging Face folder (config.json with the "engram" block, model.safetensors in BF16, tokenizer);
- reference.npz, part 1: prompts that exercise every n-gram order, the first tokens of a sequence
  and repeated n-grams, with the torch model's float32 logits for each (every 8th vocabulary
  column).
- reference.npz, part 2: 10,000 random id sequences with the torch hash indexes of every position,
  stored in full for the first 100 and as a SHA-256 digest of the int64 array for all.

Needs the `train` extra (torch). Rerun it whenever tools/torch_engram.py changes.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HASH_SEQUENCES, HASH_LENGTH = 10_000, 12
LOGIT_STRIDE = 8  # keep every 8th vocabulary column of the logits: the fixture stays small
TEXT_PROMPTS = [
    "the cat sat on the mat. the cat sat on the mat. the cat sat on the mat.",
    "Once upon a time there was a little house, and in the little house there lived a mouse.",
    "A",
]


def build_model(tokenizer_dir: Path):
    import torch
    from tokenizers import Tokenizer

    from minillm.model.engram_hash import compress_vocabulary
    from tools.torch_model import DeepseekV3LM, ModelConfig
    from tools.train import MODEL_SIZES

    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    engram = dict(layer_ids=[1], max_ngram_size=3, n_head_per_ngram=4, n_embed_per_ngram=64,
                  engram_vocab_size=[700, 900], seed=7, kernel_size=4, pad_id=1)
    config = ModelConfig(vocab_size=tokenizer.get_vocab_size(), num_nextn_predict_layers=0, engram=engram,
                         **MODEL_SIZES["test"])
    torch.manual_seed(0)
    model = DeepseekV3LM(config)
    model.set_engram_vocabulary(compress_vocabulary(tokenizer))
    engram_module = model.engram_modules()[0]
    with torch.no_grad():
        engram_module.embedding.weight.normal_(0.0, 1.0)
        for proj in (engram_module.key_proj, engram_module.value_proj):
            proj.weight.normal_(0.0, 0.1)
            proj.bias.normal_(0.0, 0.1)
        engram_module.conv.weight.normal_(0.0, 0.5)
        for norm in (engram_module.key_norm, engram_module.query_norm, engram_module.conv_norm):
            norm.weight.uniform_(0.5, 1.5)
        for param in model.parameters():
            param.copy_(param.to(torch.bfloat16).float())
    return model.eval(), tokenizer


def prompts(tokenizer, vocab_size: int) -> list[np.ndarray]:
    """Text prompts (BOS first), one starting without BOS, one of repeated ids, one random."""
    texts = [[0] + tokenizer.encode(text, add_special_tokens=False).ids for text in TEXT_PROMPTS]
    repeated = [5, 6, 7] * 6 + [1, 1, 1, 9]
    random_ids = np.random.default_rng(3).integers(2, vocab_size, 40).tolist()
    return [np.array(p, dtype=np.int64) for p in texts + [texts[1][1:], repeated, random_ids]]


def main() -> None:
    import torch

    from tools.export import export_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, default=ROOT / "weights" / "minillm-tiny-baseline")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "torch" / "engram_small")
    args = parser.parse_args()

    model, tokenizer = build_model(args.tokenizer)
    if args.out.exists():
        shutil.rmtree(args.out)
    export_model(model, args.tokenizer, args.out, dtype=torch.bfloat16)

    arrays = {}
    with torch.no_grad():
        for i, ids in enumerate(prompts(tokenizer, model.config.vocab_size)):
            arrays[f"prompt_{i}"] = ids
            logits = model(torch.from_numpy(ids)[None])["logits"][0].float().numpy()
            arrays[f"logits_{i}"] = logits[:, ::LOGIT_STRIDE]
        sequences = np.random.default_rng(11).integers(0, model.config.vocab_size, (HASH_SEQUENCES, HASH_LENGTH))
        indexes = model.engram_modules()[0].hash(torch.from_numpy(sequences)).numpy().astype(np.int64)
    arrays["hash_sequences"] = sequences.astype(np.uint16)
    arrays["hash_indexes_head"] = indexes[:100]
    arrays["hash_indexes_sha256"] = np.frombuffer(hashlib.sha256(np.ascontiguousarray(indexes).tobytes()).digest(),
                                                  dtype=np.uint8)
    np.savez_compressed(args.out / "reference.npz", **arrays)
    print(f"wrote {args.out}: {len(TEXT_PROMPTS) + 3} prompts, {HASH_SEQUENCES} hashed sequences")


if __name__ == "__main__":
    main()
