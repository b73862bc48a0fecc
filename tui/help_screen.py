"""The help screen: every key the app responds to, and what the panels show."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

# Keys handled by widgets rather than by app bindings, so the binding list cannot supply them.
WIDGET_KEYS = (
    ("enter", "in the prompt: generate; in hbm or dram: apply the budget"),
    ("tab / shift+tab", "move between the prompt and the controls"),
    ("space", "on MTP: switch speculative decoding on or off"),
)

PANELS = (
    "Tiers: used bytes by kind against each budget, traffic in and out per second.",
    "KV pages: one cell per page in token order: █ hbm, ▒ dram, ░ ssd.",
    "Experts: ● resident in hbm, background = tokens routed since the last refresh.",
    "Expert hits and misses and prefix-cache hit tokens count the current generation.",
)


class HelpScreen(ModalScreen[None]):
    """Modal list of keys built from the app's bindings plus the widget keys above."""

    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        keys = Table.grid(padding=(0, 2))
        keys.add_column(style="bold", no_wrap=True)
        keys.add_column()
        for binding in self.app.BINDINGS:
            if isinstance(binding, Binding) and binding.description:
                keys.add_row(binding.key.replace(",", " / "), binding.tooltip or binding.description)
        for key, description in WIDGET_KEYS:
            keys.add_row(key, description)
        with Vertical(id="help-dialog"):
            yield Static("Keys", classes="help-title")
            yield Static(keys)
            yield Static("Panels", classes="help-title")
            yield Static("\n".join(PANELS))
            yield Static("Press Esc or F1 to close.", classes="help-hint")
