"""Snapshot tests of the TUI screens at a fixed terminal size (pytest-textual-snapshot).

Update the stored SVGs after an intended change with `python -m pytest tests/test_tui_snapshots.py
--snapshot-update`, and look at the report before committing them.
"""

import time

import pytest

pytest.importorskip("pytest_textual_snapshot")

from textual.widgets import Input  # noqa: E402

import minillm  # noqa: E402
import minillm.engine.llm  # noqa: E402
from test_tui_app import write_tui_model  # noqa: E402
from tui.app import MiniLLMApp  # noqa: E402

WIDE = (120, 40)
NARROW = (80, 24)


class FakeTime:
    """Stands in for the `time` module of the engine: each perf_counter() call advances 1 ms.

    Tokens per second and traffic rates then depend on the number of clock reads only."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 0.001
        return self.now

    def __getattr__(self, name):
        return getattr(time, name)


@pytest.fixture(scope="module")
def snapshot_model_dir(tmp_path_factory):
    return write_tui_model(tmp_path_factory.mktemp("tui_snapshot_model"))


@pytest.fixture
def app(snapshot_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MINILLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(minillm.engine.llm, "time", FakeTime())
    model = minillm.load(snapshot_model_dir, hbm="1MiB", page_tokens=4)
    # A refresh interval far longer than the generation: the panels update once after the first
    # token and once at the end, whatever the speed of the machine.
    yield MiniLLMApp(model, temperature=0.0, max_tokens=48, refresh_hz=0.001)
    model.close()


async def steady_cursor(pilot) -> None:
    for field in pilot.app.query(Input):
        field.cursor_blink = False


async def generate_once(pilot) -> None:
    await steady_cursor(pilot)
    await pilot.press(*"Once upon a time", "enter")  # type a prompt and start generating
    # Wait for the status of the finished generation rather than for `generating` to be False,
    # which it also is when the Enter key has not been handled yet.
    deadline = time.monotonic() + 60
    while not str(pilot.app.query_one("#prompt", Input).border_subtitle).startswith("max tokens"):
        assert time.monotonic() < deadline, "timed out after 60 s waiting for the generation to finish"
        await pilot.pause(0.05)
    await pilot.app.workers.wait_for_complete()
    # The app turns the cursor blink back on when the generation ends, and a blinking cursor is
    # shown or hidden depending on when the screenshot is taken.
    await steady_cursor(pilot)
    await pilot.pause()


class TestMainScreen:
    def test_idle(self, app, snap_compare):
        """Before the first generation the panels show the loaded weights and empty KV pages."""
        assert snap_compare(app, terminal_size=WIDE, run_before=steady_cursor)

    def test_after_generation(self, app, snap_compare):
        """After 48 greedy tokens the output, tiers, page map, experts and counters are filled in."""
        assert snap_compare(app, terminal_size=WIDE, run_before=generate_once)

    def test_after_generation_narrow(self, app, snap_compare):
        """At 80x24 the dashboard narrows and scrolls, and the output pane stays readable."""
        assert snap_compare(app, terminal_size=NARROW, run_before=generate_once)


class TestHelpScreen:
    def test_keys(self, app, snap_compare):
        """F1 opens the list of keys over the main screen."""
        async def open_help(pilot) -> None:
            await steady_cursor(pilot)
            await pilot.press("f1")  # open the help screen

        assert snap_compare(app, terminal_size=WIDE, run_before=open_help)
