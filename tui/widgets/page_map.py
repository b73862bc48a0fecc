"""The KV page map: one cell per page of the running sequence, coloured by the tier it is in."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from tui.widgets.tier_panel import refresh_if_changed

# Letter in LLM.snapshot()["page_map"] -> tier name, glyph and colour. The glyphs differ as well
# as the colours, so the map still reads in a monochrome terminal or a text capture.
TIER_STYLES = {"h": ("hbm", "█", "green"), "d": ("dram", "▒", "yellow"), "s": ("ssd", "░", "dodger_blue1")}
UNKNOWN_STYLE = ("?", "?", "red")


class PageMap(Widget):
    """Cells in token order, wrapped to the widget's width; page i covers tokens i*P .. i*P+P-1."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.page_map = ""
        self.page_tokens = 0
        self._shown: Text | None = None

    def update_map(self, page_map: str, page_tokens: int) -> None:
        # A layout pass, which costs far more than a repaint, only when the map gains or loses a row.
        rows_before = self._rows(len(self.page_map))
        self.page_map, self.page_tokens = page_map, page_tokens
        subtitle = f"{page_tokens} tokens per page" if page_tokens else ""
        if self.border_subtitle != subtitle:  # setting it repaints, even to the same text
            self.border_subtitle = subtitle
        if self._rows(len(page_map)) != rows_before:
            self.refresh(layout=True)
        else:
            refresh_if_changed(self)

    def _rows(self, pages: int) -> int:
        return max(1, -(-pages // self._width()))

    def _width(self) -> int:
        return max(1, self.content_region.width or self.size.width or 40)

    def render(self) -> Text:
        self._shown = self.render_text()
        return self._shown

    def render_text(self) -> Text:
        text = Text()
        for letter, (name, glyph, style) in TIER_STYLES.items():
            text.append(f"{glyph} ", style=style)
            text.append(f"{name} {self.page_map.count(letter)}  ")
        width = self._width()
        if not self.page_map:
            text.append("\nno KV pages: start a generation", style="dim")
        for start in range(0, len(self.page_map), width):
            text.append("\n")
            for letter in self.page_map[start:start + width]:
                _, glyph, style = TIER_STYLES.get(letter, UNKNOWN_STYLE)
                text.append(glyph, style=style)
        return text
