"""Token streams for training: tokenize the corpus once, cache the ids, sample windows.

Each book becomes ``<|bos|> text <|eos|>``, and the books are concatenated into one stream per
split. Training windows start at a paragraph boundary and get a ``<|bos|>`` in front, so every
sample looks like the start of a prompt: ``[bos, t_p, ..., t_{p+L}]`` (length L + 2, enough for
main-model targets t_{i+1} and MTP targets t_{i+2} at all L positions).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from tools.corpus import Book

logger = logging.getLogger(__name__)

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


@dataclass
class TokenStream:
    """Token ids of one split and the offsets at which paragraphs start."""

    ids: np.ndarray
    paragraph_starts: np.ndarray

    def window_starts(self, window: int) -> np.ndarray:
        """Return the paragraph starts that leave ``window`` tokens before the end of the stream."""
        starts = self.paragraph_starts[self.paragraph_starts + window <= len(self.ids)]
        if len(starts) == 0:
            raise ValueError(f"stream of {len(self.ids)} tokens is too short for windows of {window} tokens")
        return starts


def tokenize_books(tokenizer: Tokenizer, books: list[Book]) -> TokenStream:
    """Tokenize ``books`` into one stream, recording where each paragraph starts."""
    bos_id = tokenizer.token_to_id("<|bos|>")
    eos_id = tokenizer.token_to_id("<|eos|>")
    encodings = tokenizer.encode_batch([book.text for book in books], add_special_tokens=False)

    pieces: list[np.ndarray] = []
    starts: list[np.ndarray] = []
    offset = 0
    for book, encoding in zip(books, encodings):
        ids = np.asarray(encoding.ids, dtype=np.int64)
        token_char_starts = np.asarray([start for start, _ in encoding.offsets], dtype=np.int64)
        paragraph_chars = [0] + [match.end() for match in _PARAGRAPH_BREAK.finditer(book.text)]
        # The first token that begins at or after each paragraph's first character.
        token_positions = np.unique(np.searchsorted(token_char_starts, paragraph_chars))
        token_positions = token_positions[token_positions < len(ids)]

        pieces.append(np.concatenate([[bos_id], ids, [eos_id]]))
        starts.append(offset + 1 + token_positions)
        offset += len(ids) + 2

    all_ids = np.concatenate(pieces)
    if all_ids.max() >= 2**16:
        raise ValueError("token ids do not fit uint16; the cache format assumes vocab_size <= 65536")
    return TokenStream(ids=all_ids.astype(np.uint16), paragraph_starts=np.concatenate(starts))


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_or_build_streams(
    tokenizer_path: Path, train_books: list[Book], validation_books: list[Book], cache_dir: Path
) -> tuple[TokenStream, TokenStream]:
    """Return (train, validation) streams, reading ``cache_dir`` when it matches the inputs.

    The cache is keyed on the tokenizer file's SHA-256 and each book's name and text length,
    so a changed tokenizer or split rebuilds it.
    """
    key = {
        "tokenizer_sha256": _file_sha256(tokenizer_path),
        "train_books": [[book.name, len(book.text)] for book in train_books],
        "validation_books": [[book.name, len(book.text)] for book in validation_books],
    }
    key_path = cache_dir / "cache_key.json"
    names = ("train_ids", "train_starts", "validation_ids", "validation_starts")

    if key_path.exists() and json.loads(key_path.read_text()) == key:
        arrays = {name: np.load(cache_dir / f"{name}.npy") for name in names}
        logger.info("loaded cached token ids from %s", cache_dir)
    else:
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        train = tokenize_books(tokenizer, train_books)
        validation = tokenize_books(tokenizer, validation_books)
        arrays = {
            "train_ids": train.ids,
            "train_starts": train.paragraph_starts,
            "validation_ids": validation.ids,
            "validation_starts": validation.paragraph_starts,
        }
        cache_dir.mkdir(parents=True, exist_ok=True)
        for name, array in arrays.items():
            np.save(cache_dir / f"{name}.npy", array)
        key_path.write_text(json.dumps(key, indent=2) + "\n")
        logger.info("tokenized corpus into %s", cache_dir)

    train = TokenStream(arrays["train_ids"], arrays["train_starts"])
    validation = TokenStream(arrays["validation_ids"], arrays["validation_starts"])
    logger.info("train tokens: %d, validation tokens: %d", len(train.ids), len(validation.ids))
    return train, validation


def make_batch(stream: TokenStream, starts: np.ndarray, seq_len: int, bos_id: int) -> np.ndarray:
    """Return an int64 array [len(starts), seq_len + 2]: bos followed by seq_len + 1 stream tokens."""
    offsets = starts[:, None] + np.arange(seq_len + 1)[None, :]
    body = stream.ids[offsets].astype(np.int64)
    bos = np.full((len(starts), 1), bos_id, dtype=np.int64)
    return np.concatenate([bos, body], axis=1)


def validation_starts(stream: TokenStream, seq_len: int, count: int | None) -> np.ndarray:
    """Return fixed window starts for validation, spread evenly over the stream.

    With ``count`` None, windows are packed one after another so every token is scored once.
    """
    candidates = stream.window_starts(seq_len + 1)
    if count is None:
        chosen = []
        next_free = 0
        for start in candidates:
            if start >= next_free:
                chosen.append(start)
                next_free = start + seq_len + 1
        return np.asarray(chosen, dtype=np.int64)
    positions = np.linspace(0, len(candidates) - 1, num=min(count, len(candidates))).round().astype(np.int64)
    return candidates[positions]
