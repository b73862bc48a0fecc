"""Units of the KV calculator: context lengths with k/M suffixes, bytes per value, GiB.

Convention: the suffixes k and M are decimal (SI), so 128k = 128,000 and 1M = 1,000,000 tokens.
The binary suffixes Ki and Mi give 128Ki = 131,072 and 1Mi = 1,048,576. Sizes are reported in
bytes and in GiB, where 1 GiB = 2^30 bytes.
"""

from __future__ import annotations

import math
import numbers
import re
from fractions import Fraction

from minillm.errors import MiniLLMError

GIB = 2**30

_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "ki": 2**10, "mi": 2**20}
_TOKEN_COUNT = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<suffix>[kKmM][iI]?)?")

CONTEXT_HELP = ("a positive whole number of tokens, optionally with a suffix: k = 1,000, M = 1,000,000, "
                "Ki = 1,024, Mi = 1,048,576 (e.g. 32768, 128k, 1M, 1Mi)")
_BYTES_HELP = "use bytes per cached value greater than 0 in whole bits, e.g. 2 for BF16, 1 for FP8, 0.5 for FP4"


class KVCalcError(MiniLLMError):
    """An invalid calculator argument: a context length or a number of bytes per value."""


def parse_token_count(text: str) -> int:
    """Parse a context length such as 32768, 128k, 1M, 1m, 1.5M or 128Ki into a token count.

    Raises KVCalcError, naming the text, unless the result is a whole number of at least 1.
    """
    match = _TOKEN_COUNT.fullmatch(text.strip())
    if match is None:
        raise KVCalcError(f"invalid context length {text!r}: use {CONTEXT_HELP}")
    multiplier = _SUFFIXES[(match["suffix"] or "").lower()]
    tokens = Fraction(match["number"]) * multiplier
    if tokens.denominator != 1:
        raise KVCalcError(f"invalid context length {text!r}: it is {float(tokens):g} tokens, "
                          f"not a whole number; use {CONTEXT_HELP}")
    return check_token_count(int(tokens), text)


def check_token_count(tokens: object, as_written: object = None) -> int:
    """Return `tokens` as an int if it is an integer of at least 1, else raise KVCalcError naming it."""
    as_written = tokens if as_written is None else as_written
    if isinstance(tokens, bool) or not isinstance(tokens, numbers.Integral):
        raise KVCalcError(f"invalid context length {as_written!r}: use {CONTEXT_HELP}")
    if tokens < 1:
        raise KVCalcError(f"invalid context length {as_written!r}: it must be at least 1 token; use {CONTEXT_HELP}")
    return int(tokens)


def parse_bytes_per_value(text: str, option: str) -> float:
    """Parse a bytes-per-value argument such as 2, 1, 0.5 or 0.75; `option` names it in errors."""
    try:
        value = float(text)
    except ValueError:
        raise KVCalcError(f"invalid {option} {text!r}: {_BYTES_HELP}") from None
    return bytes_to_bits(value, option, as_written=text) / 8


def bytes_to_bits(value: object, option: str, as_written: object = None) -> int:
    """Convert bytes per value to whole bits per value, or raise KVCalcError naming `option`.

    `as_written` is the value as the user typed it, for the error message, and defaults to `value`.
    """
    as_written = value if as_written is None else as_written
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise KVCalcError(f"invalid {option} {as_written!r}: {_BYTES_HELP}")
    bits = value * 8
    if bits != int(bits):
        raise KVCalcError(f"invalid {option} {as_written!r}: it is {bits:g} bits, not a whole number; {_BYTES_HELP}")
    return int(bits)


def format_bytes_per_value(value: float) -> str:
    """Write 1.0 as '1' and 0.5 as '0.5', for headers and tables."""
    return f"{value:g}"
