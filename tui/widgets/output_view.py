"""The streaming output pane."""

from __future__ import annotations

import unicodedata

from rich.style import Style
from rich.text import Text
from textual.geometry import Region, Size
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget


def printable(text: str) -> str:
    """Replace control characters other than newline and tab with U+FFFD.

    A model can emit any byte, and a raw escape or carriage return would corrupt the screen.
    """
    return "".join(char if char in "\n\t" or unicodedata.category(char) != "Cc" else "\ufffd" for char in text)


class OutputView(ScrollView, can_focus=True):
    """Scrolling pane with the dimmed prompt and the text generated after it, word-wrapped.

    Lines are drawn with Textual's line API: an update re-wraps only the last paragraph and
    changes the virtual size, with no layout pass of the screen. A Static that grows with the
    text would make every refresh lay out and paint the screen twice, which cost more than all
    the other panels together. The pane follows the newest line while it is scrolled to the end.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._prompt = ""
        self._text = ""
        self._done: list[Text] = []  # wrapped lines of the paragraphs before the last newline
        self._done_chars = 0  # characters of prompt + text that _done covers, newlines included
        self._open: list[Text] = []  # wrapped lines of the last paragraph
        self._width = 0
        self._following = True  # scroll to each new line; off while the user has scrolled up
        self._strips: dict[int, Strip] = {}  # rendered lines of _done, by index
        self._open_strips: dict[tuple, Strip] = {}  # rendered lines of _open, by text and spans
        self._strip_style = Style()  # the widget's rich_style when the strips were rendered
        self._line_width = 0  # scrollable_content_region.width, read once per repaint

    @property
    def text(self) -> str:
        """The generated text so far, without the prompt."""
        return self._text

    @property
    def lines(self) -> list[str]:
        """The wrapped lines as shown, without styles."""
        return [line.plain for line in self._done + self._open]

    def start(self, prompt: str) -> None:
        """Clear the pane and show `prompt` dimmed, ready for its continuation."""
        self._prompt, self._text = printable(prompt), ""
        self._rewrap_all()
        self.scroll_home(animate=False, immediate=True)
        self._following = True  # after scroll_home, whose upward scroll switches it off

    def clear(self) -> None:
        self.start("")

    def append(self, text: str) -> None:
        if not text:
            return
        self._text += printable(text)
        self._wrap_tail()
        if self._following:
            # Immediate, so the scroll and the new text are painted in one refresh.
            self.scroll_end(animate=False, x_axis=False, immediate=True)

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        if new < old:
            self._following = False
        elif new >= self.max_scroll_y:
            self._following = True

    def on_resize(self) -> None:
        if self.scrollable_content_region.width != self._width:
            self._rewrap_all()

    def _full_text(self) -> Text:
        content = Text(self._prompt, style="dim")
        content.append(self._text)
        return content

    def _rewrap_all(self) -> None:
        self._done, self._done_chars = [], 0
        self._strips.clear()
        self._wrap_tail()

    def _wrap_tail(self) -> None:
        """Wrap the text after the last completed paragraph, moving finished paragraphs to _done."""
        self._width = max(1, self.scrollable_content_region.width or 1)
        content = self._full_text()
        tail = content[self._done_chars:]
        cut = tail.plain.rfind("\n")
        if cut >= 0:
            self._done.extend(self._wrap(tail[:cut]))
            self._done_chars += cut + 1
            tail = tail[cut + 1:]
        self._open = self._wrap(tail)
        keys = {line_key(line) for line in self._open}
        self._open_strips = {key: strip for key, strip in self._open_strips.items() if key in keys}
        self._resize_content(Size(self._width, len(self._done) + len(self._open)))
        self.refresh()

    def _resize_content(self, size: Size) -> None:
        """Set the scrollable size without the layout pass that assigning `virtual_size` starts.

        The stylesheet fixes the pane's own size, so more lines change only the scroll range and
        the scrollbar. A layout pass of the whole screen on every update cost the generation
        thread more time than all the panels' repaints together. A scrollbar that appears or
        disappears still starts one, through `show_vertical_scrollbar`."""
        if size == self.virtual_size:
            return
        self.set_reactive(Widget.virtual_size, size)
        # NOTE: _scroll_update is Textual's private step (8.2.8) that resizes the scrollbars and
        # clamps the scroll offsets after a change of virtual size.
        self._scroll_update(size)

    def _wrap(self, text: Text) -> list[Text]:
        return list(text.wrap(self.app.console, self._width)) or [Text()]

    def render_lines(self, crop: Region) -> list[Strip]:
        # rich_style and the content region walk the DOM on every read, which cost more than
        # the text itself when read once per line, so render_line uses the values read here.
        style = self.rich_style
        if style != self._strip_style:
            self._strips.clear()
            self._open_strips.clear()
            self._strip_style = style
        self._line_width = self.scrollable_content_region.width
        return super().render_lines(crop)

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        index = scroll_y + y
        width, style = self._line_width, self._strip_style
        done = len(self._done)
        if index < done:
            strip = self._strips.get(index)
            if strip is None:
                strip = self._strips[index] = self._render_text_line(self._done[index])
        elif index - done < len(self._open):
            strip = self._open_strip(self._open[index - done])
        else:
            return Strip.blank(width, style)
        return strip.crop_extend(scroll_x, scroll_x + width, style)

    def _open_strip(self, line: Text) -> Strip:
        """Render a line of the last paragraph, reusing the strip of an identical line.

        Appending text re-wraps the last paragraph, but only its last line or two change, so
        most lines come from the previous update's strips. The cache keeps only the lines of the
        latest wrap."""
        key = line_key(line)
        strip = self._open_strips.get(key)
        if strip is None:
            strip = self._open_strips[key] = self._render_text_line(line)
        return strip

    def _render_text_line(self, line: Text) -> Strip:
        line = line.copy()
        line.stylize_before(self._strip_style)
        return Strip(line.render(self.app.console), line.cell_len)


def line_key(line: Text) -> tuple:
    """Key a wrapped line by its text and styles, which is all that its rendered strip depends on."""
    return line.plain, tuple(line.spans)
