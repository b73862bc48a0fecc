"""One memory tier: its budget, the bytes used by each kind, and its traffic per second."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widget import Widget
from textual.widgets import Label, Static

from tui.stats import KINDS, short_size, sparkline

# Colours of the kinds of data a tier holds, shared by the usage bar and its legend.
KIND_STYLES = {"kv": "cyan", "experts": "magenta", "engram": "yellow", "weights": "blue"}
NAME_WIDTH = 5  # "dram "
FIGURES_WIDTH = 17  # " 26.2M/28.0M  94%", so the bars of the three tiers line up
MIN_BAR_WIDTH = 8


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


class TierPanel(Widget):
    """Budget, use by kind, and in/out traffic sparklines of the tier named `tier`."""

    def __init__(self, tier: str, **kwargs) -> None:
        super().__init__(id=f"tier-{tier}", classes="tier", **kwargs)
        self.tier = tier
        self._snapshot: dict | None = None
        self._history: dict[str, list[float]] = {"in": [], "out": []}

    def compose(self) -> ComposeResult:
        yield Static(self._usage_text(), classes="tier-usage")
        yield Static("", classes="tier-kinds")
        with Horizontal(classes="tier-traffic"):
            yield Label("in ", classes="traffic-label")
            yield Static("", classes="traffic-spark traffic-in")
            yield Label("", classes="traffic-rate traffic-in-rate")
            yield Label(" out ", classes="traffic-label")
            yield Static("", classes="traffic-spark traffic-out")
            yield Label("", classes="traffic-rate traffic-out-rate")

    def _usage_text(self) -> Text:
        text = Text(f"{self.tier:<{NAME_WIDTH}}", style="bold")
        tier = self._snapshot
        if tier is None:
            return text
        capacity, used = tier["capacity_bytes"], tier["used_bytes"]
        percent = 100 * used / capacity if capacity else 0.0
        figures = f" {short_size(used)}/{short_size(capacity)} {percent:3.0f}%".rjust(FIGURES_WIDTH)
        width = max(MIN_BAR_WIDTH, (self.content_region.width or 60) - NAME_WIDTH - len(figures))
        text.append_text(usage_bar(tier["used_by_kind"], capacity, width))
        text.append(figures)
        return text

    def on_resize(self) -> None:
        self.query_one(".tier-usage", Static).update(self._usage_text())
        self._draw_sparklines()

    def _draw_sparklines(self) -> None:
        # Both directions share one scale, so a busy "in" next to an idle "out" reads correctly.
        peak = max((max(values, default=0.0) for values in self._history.values()), default=0.0)
        for direction, values in self._history.items():
            line = self.query_one(f".traffic-{direction}", Static)
            line.update(sparkline(values, line.content_region.width or 10, peak))

    def update_tier(self, tier: dict, rate_in: float, rate_out: float,
                    history_in: list[float], history_out: list[float]) -> None:
        """Show one tier of a snapshot with its current and recent traffic rates (bytes/s)."""
        self._snapshot = tier
        self.query_one(".tier-usage", Static).update(self._usage_text())
        kinds = Text()
        for kind in KINDS:
            kinds.append(kind, style=KIND_STYLES[kind])
            kinds.append(f" {short_size(tier['used_by_kind'].get(kind, 0))} ")
        kinds.rstrip()
        self.query_one(".tier-kinds", Static).update(kinds)
        self._history = {"in": history_in, "out": history_out}
        self._draw_sparklines()
        self.query_one(".traffic-in-rate", Label).update(f"{short_size(rate_in)}/s")
        self.query_one(".traffic-out-rate", Label).update(f"{short_size(rate_out)}/s")
