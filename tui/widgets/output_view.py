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


CHUNK_CHARS = 500  # a chunk is closed at its last newline once it is longer than this


class OutputView(VerticalScroll):
    """Scrolling pane with the prompt and the text generated after it.

    The text is split into Static chunks at newlines, so an update re-wraps and repaints only
    the last chunk, and the cost of a refresh does not grow with the length of the output.
    Text starts at the top. Once it overflows, the pane is anchored and follows the newest
    line until the user scrolls up. It is not anchored from the start, because Textual aligns
    anchored content that is shorter than the pane to the bottom."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._prompt = ""
        self._text = ""
        self._chunk_start = 0  # offset in _text where the open (last) chunk begins
        self._open_chunk = Static(classes="output-chunk")

    def compose(self):
        yield self._open_chunk

    @property
    def text(self) -> str:
        """The generated text so far, without the prompt."""
        return self._text

    @property
    def chunks(self) -> list[Static]:
        return list(self.query(".output-chunk").results(Static))

    def start(self, prompt: str) -> None:
        """Clear the pane and show `prompt` dimmed, ready for its continuation."""
        self._reset(printable(prompt))

    def clear(self) -> None:
        self._reset("")

    def append(self, text: str) -> None:
        if not text:
            return
        self._text += printable(text)
        tail = self._text[self._chunk_start:]
        cut = tail.rfind("\n")
        if len(tail) > CHUNK_CHARS and cut > 0:
            # Close the chunk at its last newline; the next chunk starts on the following line.
            self._open_chunk.update(self._chunk_content(tail[:cut]))
            self._chunk_start += cut + 1
            tail = tail[cut + 1:]
            self._open_chunk = Static(classes="output-chunk")
            self.mount(self._open_chunk)
        self._open_chunk.update(self._chunk_content(tail))
        self.call_after_refresh(self._anchor_when_overflowing)

    def _reset(self, prompt: str) -> None:
        self._prompt, self._text, self._chunk_start = prompt, "", 0
        self.anchor(False)
        for chunk in self.chunks[1:]:
            chunk.remove()
        self._open_chunk = self.chunks[0] if self.chunks else self._open_chunk
        self._open_chunk.update(self._chunk_content(""))

    def _chunk_content(self, text: str) -> Text:
        """Build the text of the open chunk, after the dimmed prompt while that is the first chunk."""
        content = Text(self._prompt if self._chunk_start == 0 else "", style="dim")
        content.append(text)
        return content

    def _anchor_when_overflowing(self) -> None:
        if not self.is_anchored and self.max_scroll_y > 0:
            self.anchor()
