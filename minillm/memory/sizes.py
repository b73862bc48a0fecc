"""Byte sizes as people write them: 64MiB, 1.5GB, 4096, 512k."""

from __future__ import annotations

import re

from minillm.errors import MemoryConfigError

_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kb": 1000, "kib": 1024,
    "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1024**4, "tb": 1000**4, "tib": 1024**4,
}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int, name: str = "size") -> int:
    """Bytes in `text`: a plain number of bytes, or a number with a unit (KiB/MiB/GiB/TiB are powers
    of 1024, KB/MB/GB/TB powers of 1000, and a bare K/M/G/T means KiB/MiB/GiB/TiB)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise MemoryConfigError(f"invalid {name} {text}: use a size of 0 or more, like 64MiB")
        return text
    match = _PATTERN.match(str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise MemoryConfigError(f"invalid {name} {text!r}: use a size like 4096, 512KiB, 64MiB or 2GB")
    return int(float(match.group(1)) * _UNITS[unit])


def format_size(size: int) -> str:
    """Bytes in the largest binary unit that keeps the number at 1 or more: 1536 -> '1.5 KiB'."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
