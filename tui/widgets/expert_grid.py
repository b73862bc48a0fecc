"""The routed experts as a layer x expert grid: hbm residency and a heat map of recent routing."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from tui.stats import hit_rate, routing_delta
from tui.widgets.tier_panel import refresh_if_changed

# Background colours from no routed tokens to the most routed expert of the latest refresh.
HEAT_STYLES = ("on grey15", "on dark_blue", "on purple4", "on red3", "on dark_orange", "on gold1")
RESIDENT_MARK = "●"
ABSENT_MARK = "·"


class ExpertGrid(Widget):
    """One row per MoE layer and one cell per routed expert: ● resident in hbm, · not.

    The background shows how many tokens went to each expert since the previous refresh,
    relative to the busiest expert of that refresh."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.moe_layers: list[int] = []
        self.resident: set[tuple[int, int]] = set()
        self.heat: list[list[int]] = []
        self.hits = 0  # expert cache hits and misses since start_generation
        self.misses = 0
        self.experts = 0
        self._baseline = (0, 0)
        self._shown: Text | None = None
        self._previous_counts: list[list[int]] | None = None

    def set_shape(self, layers: list[int], experts: int) -> None:
        """Size the grid before the first snapshot arrives."""
        self.moe_layers, self.experts = layers, experts
        self.heat = [[0] * experts for _ in layers]
        self.refresh(layout=True)

    def start_generation(self, snapshot: dict) -> None:
        """Count hits and misses from `snapshot` on, and forget the previous generation's routing
        counts, which the engine resets too."""
        self._previous_counts = None
        self._baseline = (snapshot.get("expert_hits", 0), snapshot.get("expert_misses", 0))

    def update_snapshot(self, snapshot: dict) -> None:
        routing = snapshot.get("routing", {})
        counts = routing.get("counts", [])
        self.moe_layers = routing.get("layers", self.moe_layers)
        if counts:
            self.experts = len(counts[0])
            delta = routing_delta(self._previous_counts, counts)
            # Keep the last picture when no token was routed since the previous refresh.
            if any(any(row) for row in delta):
                self.heat = delta
            self._previous_counts = counts
        self.resident = {(layer, expert) for layer, expert in snapshot.get("experts_resident", [])}
        self.hits = snapshot.get("expert_hits", 0) - self._baseline[0]
        self.misses = snapshot.get("expert_misses", 0) - self._baseline[1]
        refresh_if_changed(self)  # the height changes only in set_shape

    def render(self) -> Text:
        self._shown = self.render_text()
        return self._shown

    def render_text(self) -> Text:
        text = Text()
        rate = hit_rate(self.hits, self.misses)
        text.append(f"hits {self.hits}  misses {self.misses}  hit rate ")
        text.append("n/a" if rate is None else f"{100 * rate:.1f}%", style="bold")
        if not self.moe_layers or not self.experts:
            text.append("\nthis model has no routed experts", style="dim")
            return text

        available = max(1, (self.content_region.width or 40) - 4)
        cell = 3  # columns per expert, narrowed when the experts do not fit
        while cell > 1 and self.experts * cell > available:
            cell -= 1
        text.append("\n    ")
        for expert in range(self.experts):
            label = str(expert) if cell > 1 or expert % 5 == 0 else " "
            text.append(label[-cell:].center(cell) if cell > 1 else label[-1], style="dim")
        peak = max((max(row) for row in self.heat if row), default=0)
        for row, layer in enumerate(self.moe_layers):
            text.append(f"\nL{layer:<3}", style="dim")
            heat_row = self.heat[row] if row < len(self.heat) else []
            for expert in range(self.experts):
                count = heat_row[expert] if expert < len(heat_row) else 0
                level = 0 if not peak or not count else 1 + (len(HEAT_STYLES) - 2) * count // peak
                mark = RESIDENT_MARK if (layer, expert) in self.resident else ABSENT_MARK
                text.append(mark.center(cell), style=HEAT_STYLES[level])
        return text
