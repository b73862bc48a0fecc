"""The streaming output pane."""

from __future__ import annotations

import unicodedata

from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static


def printable(text: str) -> str:
    """Replace control characters other than newline and tab with U+FFFD.

    A model can emit any byte, and a raw escape or carriage return would corrupt the screen.
    """
    return "".join(char if char in "\n\t" or unicodedata.category(char) != "Cc" else "\ufffd" for char in text)


class OutputView(VerticalScroll):
    """Scrolling pane with the prompt and the text generated after it.

    Text starts at the top. Once it overflows, the pane is anchored and follows the newest
    line until the user scrolls up. It is not anchored from the start, because Textual aligns
    anchored content that is shorter than the pane to the bottom."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._prompt = ""
        self._text = ""

    def compose(self):
        yield Static(id="output-text")

    @property
    def text(self) -> str:
        """The generated text so far, without the prompt."""
        return self._text

    def start(self, prompt: str) -> None:
        """Clear the pane and show `prompt` dimmed, ready for its continuation."""
        self._prompt = printable(prompt)
        self._text = ""
        self.anchor(False)
        self._render_text()

    def append(self, text: str) -> None:
        if text:
            self._text += printable(text)
            self._render_text()

    def clear(self) -> None:
        self._prompt = self._text = ""
        self.anchor(False)
        self._render_text()

    def _render_text(self) -> None:
        content = Text(self._prompt, style="dim")
        content.append(self._text)
        self.query_one("#output-text", Static).update(content)
        self.call_after_refresh(self._anchor_when_overflowing)

    def _anchor_when_overflowing(self) -> None:
        if not self.is_anchored and self.max_scroll_y > 0:
            self.anchor()
