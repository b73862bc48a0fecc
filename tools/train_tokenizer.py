"""Train the byte-level BPE tokenizer of the default minillm model.

Usage::

    python tools/train_tokenizer.py --corpus DIR --out runs/tokenizer

Writes ``tokenizer.json`` (a ``tokenizers`` file that transformers' PreTrainedTokenizerFast also
loads) and ``tokenizer_config.json``. Only the training books are used, so the held-out
validation books stay unseen by the tokenizer as well.

The default vocabulary is 4096 tokens. The corpus is about 3.5 M tokens, so each of 4096 ids
appears hundreds of times on average, while an 8192 vocabulary would leave many rare ids nearly
untrained in a one-hour CPU run. The vocabulary also sets the size of the embedding, the output
head and their MTP copies (4 x vocab x hidden weights), which must fit the 32 MB weight budget.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.corpus import read_books, split_books  # noqa: E402

logger = logging.getLogger(__name__)

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
# Special tokens get the first ids: bos = 0 and eos = 1, as in DeepSeek-V3's config.
SPECIAL_TOKENS = [BOS_TOKEN, EOS_TOKEN]
DEFAULT_VOCAB_SIZE = 4096
DEFAULT_MODEL_MAX_LENGTH = 16384


def train_tokenizer(texts: list[str], vocab_size: int = DEFAULT_VOCAB_SIZE, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE tokenizer on ``texts``.

    Encoding adds ``<|bos|>`` in front of every sequence (HF's ``add_bos_token=True``), and
    decoding maps byte-level symbols back to UTF-8, so ``decode(encode(s)) == s`` for any string
    when special tokens are skipped.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size {vocab_size} is too small: byte-level BPE needs at least 258 ids")

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()

    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))

    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    return tokenizer


def tokenizer_config(model_max_length: int) -> dict:
    """Return the ``tokenizer_config.json`` contents that transformers expects next to tokenizer.json."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": None,
        "unk_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "legacy": False,
    }


def save_tokenizer(tokenizer: Tokenizer, out_dir: Path, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH) -> None:
    """Write tokenizer.json and tokenizer_config.json into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    with open(out_dir / "tokenizer_config.json", "w", encoding="utf-8") as handle:
        json.dump(tokenizer_config(model_max_length), handle, indent=2)
        handle.write("\n")


def check_round_trip(tokenizer: Tokenizer, text: str) -> None:
    """Raise RuntimeError if decoding the encoding of ``text`` does not return ``text``."""
    ids = tokenizer.encode(text).ids
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    if decoded != text:
        raise RuntimeError(f"tokenizer round trip failed: {text!r} decoded as {decoded!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="folder of *.txt books")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the tokenizer files")
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE, help="vocabulary size incl. special tokens")
    parser.add_argument("--min-frequency", type=int, default=2, help="minimum pair count for a merge")
    parser.add_argument(
        "--model-max-length", type=int, default=DEFAULT_MODEL_MAX_LENGTH, help="model_max_length in tokenizer_config.json"
    )
    parser.add_argument(
        "--validation-books", nargs="*", default=None, help="book file names to exclude (default: tools.corpus defaults)"
    )
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    train_books, validation_books = split_books(read_books(args.corpus), args.validation_books)
    logger.info(
        "training tokenizer on %d books, excluding validation books %s",
        len(train_books),
        [book.name for book in validation_books],
    )
    tokenizer = train_tokenizer([book.text for book in train_books], args.vocab_size, args.min_frequency)

    for sample in ["Once upon a time, the Rabbit said: \u2018Oh dear!\u2019\n\nThe end.", validation_books[0].text[:2000]]:
        check_round_trip(tokenizer, sample)

    save_tokenizer(tokenizer, args.out, args.model_max_length)
    logger.info("wrote %s/tokenizer.json (vocabulary %d)", args.out, tokenizer.get_vocab_size())


if __name__ == "__main__":
    main()
