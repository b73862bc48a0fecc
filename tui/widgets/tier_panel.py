"""One memory tier: its budget, the bytes used by each kind, and its traffic per second."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from tui.stats import KINDS, short_size, sparkline

# Colours of the kinds of data a tier holds, shared by the usage bar and its legend.
KIND_STYLES = {"kv": "cyan", "experts": "magenta", "engram": "yellow", "weights": "blue"}
NAME_WIDTH = 5  # "dram "
FIGURES_WIDTH = 17  # " 26.2M/28.0M  94%", so the bars of the three tiers line up
MIN_BAR_WIDTH = 8
RATE_WIDTH = 8  # " 99.9K/s": a space and the longest rate that short_size writes


def usage_bar(used_by_kind: dict[str, int], capacity: int, width: int) -> Text:
    """Draw a bar of `width` cells, one coloured run per kind in proportion to the tier's capacity."""
    bar = Text()
    filled = 0
    for kind in KINDS:
        cells = round(width * used_by_kind.get(kind, 0) / capacity) if capacity else 0
        cells = min(cells, width - filled)
        bar.append("█" * cells, style=KIND_STYLES[kind])
        filled += cells
    bar.append("░" * (width - filled), style="bright_black")
    return bar


def refresh_if_changed(widget) -> None:
    """Repaint `widget` only when its `render_text()` differs from what it shows.

    A repaint costs far more than building the Text, and on a quiet tier most updates change
    nothing, so skipping them leaves more of the GIL to the generation thread."""
    if widget.render_text() != widget._shown:
        widget.refresh()


class TierPanel(Widget):
    """Budget, use by kind, and in/out traffic sparklines of the tier named `tier`, in three lines.

    One widget draws all three lines, because every child widget adds to the layout and render
    work of each refresh, and that work competes with the generation thread for the GIL."""

    def __init__(self, tier: str, **kwargs) -> None:
        super().__init__(id=f"tier-{tier}", classes="tier", **kwargs)
        self.tier = tier
        self.snapshot: dict | None = None
        self.rates = {"in": 0.0, "out": 0.0}
        self.history: dict[str, list[float]] = {"in": [], "out": []}
        self._shown: Text | None = None

    def update_tier(self, tier: dict, rate_in: float, rate_out: float,
                    history_in: list[float], history_out: list[float]) -> None:
        """Show one tier of a snapshot with its current and recent traffic rates (bytes/s)."""
        self.snapshot = tier
        self.rates = {"in": rate_in, "out": rate_out}
        self.history = {"in": history_in, "out": history_out}
        refresh_if_changed(self)

    def render(self) -> Text:
        self._shown = self.render_text()
        return self._shown

    def render_text(self) -> Text:
        width = self.content_region.width or 60
        text = self._usage_line(width)
        text.append("\n")
        text.append_text(self._kinds_line())
        text.append("\n")
        text.append_text(self._traffic_line(width))
        return text

    def _usage_line(self, width: int) -> Text:
        text = Text(f"{self.tier:<{NAME_WIDTH}}", style="bold")
        tier = self.snapshot
        if tier is None:
            return text
        capacity, used = tier["capacity_bytes"], tier["used_bytes"]
        percent = 100 * used / capacity if capacity else 0.0
        figures = f" {short_size(used)}/{short_size(capacity)} {percent:3.0f}%".rjust(FIGURES_WIDTH)
        bar_width = max(MIN_BAR_WIDTH, width - NAME_WIDTH - len(figures))
        text.append_text(usage_bar(tier["used_by_kind"], capacity, bar_width))
        text.append(figures)
        return text

    def _kinds_line(self) -> Text:
        text = Text()
        used = self.snapshot["used_by_kind"] if self.snapshot else {}
        for kind in KINDS:
            text.append(kind, style=KIND_STYLES[kind])
            text.append(f" {short_size(used.get(kind, 0))} ")
        text.rstrip()
        return text

    def _traffic_line(self, width: int) -> Text:
        # Both directions share one scale, so a busy "in" next to an idle "out" reads correctly.
        peak = max(max(values, default=0.0) for values in self.history.values())
        spark_width = max(1, (width - len("in ") - len(" out ") - 2 * RATE_WIDTH) // 2)
        text = Text()
        for direction in ("in", "out"):
            text.append(f"{direction} " if direction == "in" else f" {direction} ", style="dim")
            text.append(sparkline(self.history[direction], spark_width, peak))
            text.append(f"{short_size(self.rates[direction])}/s".rjust(RATE_WIDTH))
        return text
