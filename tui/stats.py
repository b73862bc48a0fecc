"""Pure helpers over `LLM.snapshot()` dictionaries: elapsed time, rates, throttling, sizes.

Nothing here imports Textual, so these helpers are unit-tested without an app.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

TIER_NAMES = ("hbm", "dram", "ssd")
KINDS = ("kv", "experts", "engram", "weights")

# Cumulative Engram counters of LLM.snapshot() that the UI shows as rates. They stay 0 for a
# model without Engram layers.
ENGRAM_COUNTERS = ("engram_lookups", "engram_rows")


def elapsed_seconds(snapshot: dict) -> float:
    """Seconds of engine time since the generation started: prefill plus decode."""
    generation = snapshot.get("generation", {})
    return float(generation.get("prefill_seconds", 0.0)) + float(generation.get("decode_seconds", 0.0))


def cumulative_series(snapshot: dict) -> dict[str, float]:
    """Collect the cumulative counters that the UI turns into rates, keyed like "hbm.in" or "engram_rows"."""
    series = {}
    for name, tier in snapshot.get("tiers", {}).items():
        series[f"{name}.in"] = float(tier["bytes_in"])
        series[f"{name}.out"] = float(tier["bytes_out"])
    for counter in ENGRAM_COUNTERS:
        if counter in snapshot:
            series[counter] = float(snapshot[counter])
    return series


def has_engram(snapshot: dict) -> bool:
    """Tell whether the model has Engram layers: its tables take tier space, or rows were looked up."""
    if any(snapshot.get(counter, 0) for counter in ENGRAM_COUNTERS):
        return True
    return any(tier.get("used_by_kind", {}).get("engram", 0) for tier in snapshot.get("tiers", {}).values())


class RateMeter:
    """Per-second rates of cumulative counters between successive snapshots of one generation.

    Time comes from the snapshots themselves (prefill plus decode seconds), so the rates are
    bytes or events per second of generation time, and they repeat exactly under a fixed clock.
    """

    def __init__(self, history: int = 60):
        self.history_length = history
        self.history: dict[str, deque[float]] = {}
        self.rates: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._last_time = 0.0

    def reset(self, snapshot: dict) -> None:
        """Start a new generation, taking `snapshot`'s counters as the values at time 0."""
        self._last = cumulative_series(snapshot)
        self._last_time = 0.0
        self.rates = dict.fromkeys(self._last, 0.0)

    def update(self, snapshot: dict) -> dict[str, float]:
        """Compute the rates since the previous update and append them to the history."""
        now = elapsed_seconds(snapshot)
        values = cumulative_series(snapshot)
        seconds = now - self._last_time
        if seconds <= 0:
            return self.rates
        for key, value in values.items():
            rate = max(0.0, (value - self._last.get(key, value)) / seconds)
            self.rates[key] = rate
            self.history.setdefault(key, deque(maxlen=self.history_length)).append(rate)
        self._last, self._last_time = values, now
        return self.rates

    def series(self, key: str) -> list[float]:
        return list(self.history.get(key, ()))


class Throttle:
    """Lets through at most one update per `interval` seconds of a caller-supplied clock."""

    def __init__(self, interval: float):
        self.interval = interval
        self._last = -math.inf

    def due(self, now: float) -> bool:
        if now - self._last < self.interval:
            return False
        self._last = now
        return True


def short_size(size: float) -> str:
    """Bytes in at most five characters with a binary unit letter: 1536 -> '1.5K', 0 -> '0'."""
    value = float(size)
    for unit in ("", "K", "M", "G", "T"):
        if abs(value) < 1024 or unit == "T":
            if unit == "" or value >= 100:
                return f"{value:.0f}{unit}"
            return f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


SPARK_LEVELS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int, peak: float | None = None) -> str:
    """Draw the last `width` values as block characters scaled to `peak` (default: their maximum).

    Zero maps to the lowest block, so an idle series reads as a flat line, and the line is
    left-padded with spaces until `width` values exist."""
    recent = values[-width:] if width > 0 else []
    top = peak if peak is not None else max(recent, default=0.0)
    cells = []
    for value in recent:
        level = 0 if top <= 0 or value <= 0 else 1 + round((len(SPARK_LEVELS) - 2) * min(value, top) / top)
        cells.append(SPARK_LEVELS[level])
    return "".join(cells).rjust(width)


def hit_rate(hits: int, misses: int) -> float | None:
    """Fraction of lookups that hit, or None before the first lookup."""
    total = hits + misses
    return hits / total if total else None


def routing_delta(previous: Iterable[Iterable[int]] | None, current: list[list[int]]) -> list[list[int]]:
    """Tokens routed to each expert since `previous` (counts of the same generation), per layer."""
    if previous is None:
        return [list(row) for row in current]
    return [[now - before for now, before in zip(row, old)] for row, old in zip(current, previous)]
