"""Tokenizer: Hugging Face `tokenizers` from tokenizer.json, with BOS/EOS from tokenizer_config.json.

Byte-level BPE tokens can end in the middle of a UTF-8 character, so streaming decode goes
through `tokenizers.decoders.DecodeStream`, which holds bytes back until a character is complete.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers.decoders import DecodeStream

from minillm.errors import TokenizerError

log = logging.getLogger(__name__)


def _token_text(value) -> str | None:
    """tokenizer_config.json writes special tokens as a string or as {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    def __init__(self, tokenizer: HFTokenizer, bos_id: int | None, eos_ids: tuple[int, ...], add_bos: bool):
        self.hf = tokenizer
        self.bos_id = bos_id
        self.eos_ids = eos_ids
        self.add_bos = add_bos and bos_id is not None

    @classmethod
    def from_directory(cls, directory: str | Path, config_bos: int | None = None,
                       config_eos: tuple[int, ...] = ()) -> Tokenizer:
        directory = Path(directory)
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"tokenizer.json not found in {directory}; pass token ids instead of text")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed files
            raise TokenizerError(f"cannot read {path}: {exc}") from None

        settings = {}
        config_path = directory / "tokenizer_config.json"
        if config_path.is_file():
            try:
                settings = json.loads(config_path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise TokenizerError(f"{config_path} is not valid JSON: {exc}") from None

        bos_id = cls._special_id(hf, settings.get("bos_token"), "bos_token", config_path)
        eos_id = cls._special_id(hf, settings.get("eos_token"), "eos_token", config_path)
        bos_id = bos_id if bos_id is not None else config_bos
        eos_ids = tuple(dict.fromkeys(((eos_id,) if eos_id is not None else ()) + tuple(config_eos)))
        return cls(hf, bos_id, eos_ids, add_bos=bool(settings.get("add_bos_token", True)))

    @staticmethod
    def _special_id(hf: HFTokenizer, value, key: str, path: Path) -> int | None:
        text = _token_text(value)
        if text is None:
            return None
        token_id = hf.token_to_id(text)
        if token_id is None:
            raise TokenizerError(f"{path}: {key} {text!r} is not in the tokenizer's vocabulary")
        return token_id

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Encode text to token ids, with BOS first when tokenizer_config.json sets add_bos_token."""
        ids = self.hf.encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def stream(self) -> "TextStream":
        return TextStream(self)


class TextStream:
    """Turns token ids into text pieces that never split a UTF-8 character."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._decoder = DecodeStream(skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """Text completed by this token; empty while a character's bytes are still incomplete."""
        return self._decoder.step(self.tokenizer.hf, int(token_id)) or ""
