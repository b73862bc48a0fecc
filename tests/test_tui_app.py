"""Pilot tests of the TUI against a real tiny model: generate, stop, change budgets, help."""

import asyncio
import time
from pathlib import Path

import pytest

pytest.importorskip("textual")

from helpers import TINY_V3, random_tensors, write_checkpoint, write_tokenizer  # noqa: E402
from textual.widgets import Input, Static  # noqa: E402

import minillm  # noqa: E402
from minillm.cli import main  # noqa: E402
from tui.app import MiniLLMApp  # noqa: E402
from tui.help_screen import HelpScreen  # noqa: E402
from tui.messages import GenerationProgress  # noqa: E402
from tui.widgets import ExpertGrid, OutputView, PageMap, StatsPanel, TierPanel  # noqa: E402

# MTP for the acceptance counters, and room for a generation long enough to stop by hand.
TUI_CONFIG = {**TINY_V3, "num_nextn_predict_layers": 1, "max_position_embeddings": 4096}
SIZE = (120, 40)
ENGRAM_MODEL = Path(__file__).parent / "fixtures" / "torch" / "engram_small"


def write_tui_model(directory):
    """Write the test checkpoint with zero EOS rows in both output heads.

    The EOS logit is then 0, and with these seeded weights some other logit exceeds it at every
    step, so greedy decoding runs to max_tokens."""
    tensors = random_tensors(TUI_CONFIG)
    eos = TUI_CONFIG["eos_token_id"]
    for name in ("lm_head.weight", "model.layers.3.shared_head.head.weight"):
        tensors[name][eos] = 0.0
    write_checkpoint(directory, TUI_CONFIG, tensors=tensors)
    write_tokenizer(directory)
    return directory


@pytest.fixture(scope="module")
def tui_model_dir(tmp_path_factory):
    return write_tui_model(tmp_path_factory.mktemp("tui_model"))


@pytest.fixture
def model(tui_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MINILLM_CACHE_DIR", str(tmp_path / "cache"))
    # hbm is tight enough that routed experts stream in from dram.
    loaded = minillm.load(tui_model_dir, hbm="1MiB", page_tokens=4)
    yield loaded
    loaded.close()


async def wait_until(pilot, condition, description: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {description}")
        await pilot.pause(0.02)


async def generate(app, pilot, prompt: str) -> None:
    """Type `prompt`, press Enter, and wait for the generation to end."""
    app.query_one("#prompt", Input).focus()
    app.query_one("#prompt", Input).value = ""
    await pilot.press(*prompt, "enter")
    await pilot.pause()
    await app.workers.wait_for_complete()
    await wait_until(pilot, lambda: not app.generating, "the finished generation to show")


def tier_text(app, tier: str) -> str:
    """The usage line of a tier panel: name, bar, used/capacity and percentage."""
    return app.query_one(f"#tier-{tier}", TierPanel).render().plain.splitlines()[0]


def stats_row(app, label: str) -> str:
    """The row of the counters panel that starts with `label`."""
    rows = app.query_one(StatsPanel).render().plain.splitlines()
    return next(row for row in rows if row.startswith(label))


def status(app) -> str:
    return str(app.query_one("#prompt", Input).border_subtitle)


def test_generation_shows_text_and_tiers(model):
    async def scenario():
        app = MiniLLMApp(model, temperature=0.0, max_tokens=30)
        async with app.run_test(size=SIZE) as pilot:
            assert status(app) == "idle"
            await generate(app, pilot, "Once upon a time")

            assert app.query_one(OutputView).text
            assert model.last_stats.generated_tokens > 0
            assert "tokens" in status(app)
            hbm = tier_text(app, "hbm")
            assert hbm.startswith("hbm")
            assert "/1.0M" in hbm
            assert " 0%" not in hbm
            pages = app.query_one(PageMap).page_map
            assert pages
            assert set(pages) <= set("hds")
            grid = app.query_one(ExpertGrid)
            assert grid.hits + grid.misses > 0
            assert any(any(row) for row in grid.heat)
            rates = app.meter.series("dram.out")
            assert max(rates) > 0  # experts streamed from dram into hbm
            assert "lookups/s n/a" in stats_row(app, "engram")  # this model has no Engram layers

    asyncio.run(scenario())


def test_engram_rates_shown(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILLM_CACHE_DIR", str(tmp_path / "cache"))
    model = minillm.load(ENGRAM_MODEL)

    async def scenario():
        app = MiniLLMApp(model, temperature=0.0, max_tokens=20)
        async with app.run_test(size=SIZE) as pilot:
            assert "lookups/s 0  rows/s 0" in stats_row(app, "engram")  # idle, but not "n/a"
            await generate(app, pilot, "Once upon a time")

            rates = app.query_one(StatsPanel).engram_rates
            assert rates is not None
            assert rates["engram_lookups"] > 0
            assert rates["engram_rows"] > 0
            assert "n/a" not in stats_row(app, "engram")

    try:
        asyncio.run(scenario())
    finally:
        model.close()


def test_escape_stops_generation(model):
    async def scenario():
        app = MiniLLMApp(model, temperature=0.0, max_tokens=4000)
        async with app.run_test(size=SIZE) as pilot:
            app.query_one("#prompt", Input).focus()
            await pilot.press(*"The fox", "enter")
            await wait_until(pilot, lambda: app.query_one(OutputView).text, "the first tokens")
            await pilot.press("escape")
            await wait_until(pilot, lambda: not app.generating, "the generation to stop", timeout=10)
            await pilot.pause()

            assert model.last_stats.generated_tokens < 4000
            assert status(app).startswith("stopped")
            assert app.is_running

            # The app can generate again after a stop.
            app.query_one("#max-tokens", Input).value = "5"
            await generate(app, pilot, "Hello")
            assert model.last_stats.generated_tokens <= 5
            assert not status(app).startswith("stopped")

    asyncio.run(scenario())


def test_budget_change_applies_between_generations(model):
    async def scenario():
        app = MiniLLMApp(model, temperature=0.0, max_tokens=10)
        async with app.run_test(size=SIZE) as pilot:
            await generate(app, pilot, "Once")
            budget = app.query_one("#hbm", Input)
            budget.value = "2MiB"
            budget.focus()
            await pilot.press("enter")
            await pilot.pause()
            assert model.memory.config.hbm == 2 * 1024**2
            assert "/2.0M" in tier_text(app, "hbm")

            await generate(app, pilot, "Once")
            assert model.last_stats.generated_tokens > 0
            assert "/2.0M" in tier_text(app, "hbm")

    asyncio.run(scenario())


def test_budgets_locked_while_generating(model):
    async def scenario():
        app = MiniLLMApp(model, temperature=0.0, max_tokens=4000)
        async with app.run_test(size=SIZE) as pilot:
            app.query_one("#prompt", Input).focus()
            await pilot.press(*"The fox", "enter")
            await wait_until(pilot, lambda: app.generating, "the generation to start", timeout=5)
            assert app.query_one("#hbm", Input).disabled
            assert app.query_one("#dram", Input).disabled
            await pilot.press("escape")
            await wait_until(pilot, lambda: not app.generating, "the generation to stop", timeout=10)
            await pilot.pause()
            assert not app.query_one("#hbm", Input).disabled

    asyncio.run(scenario())


@pytest.mark.parametrize("hbm", ["lots", "1KiB"])
def test_bad_budget_keeps_old_one(model, hbm):
    async def scenario():
        app = MiniLLMApp(model, temperature=0.0, max_tokens=10)
        async with app.run_test(size=SIZE) as pilot:
            app.query_one("#hbm", Input).value = hbm
            app.query_one("#prompt", Input).focus()
            await pilot.press(*"Once", "enter")
            await pilot.pause(0.2)
            assert not app.generating
            assert model.memory.config.hbm == 1024**2
            assert status(app) == "idle"
            assert any(n.severity == "error" for n in app._notifications)

    asyncio.run(scenario())


def test_invalid_temperature_rejected(model):
    async def scenario():
        app = MiniLLMApp(model, max_tokens=10)
        async with app.run_test(size=SIZE) as pilot:
            app.query_one("#temperature", Input).value = "-1"
            app.query_one("#prompt", Input).focus()
            await pilot.press(*"Once", "enter")
            await pilot.pause(0.2)
            assert not app.generating
            assert status(app) == "idle"

    asyncio.run(scenario())


def test_updates_follow_refresh_rate(model):
    received = []

    def record(message):
        if isinstance(message, GenerationProgress):
            received.append(message)

    async def scenario():
        app = MiniLLMApp(model, temperature=0.0, max_tokens=300, refresh_hz=4.0)
        async with app.run_test(size=SIZE, message_hook=record) as pilot:
            await generate(app, pilot, "Once")

    asyncio.run(scenario())
    stats = model.last_stats
    assert stats.generated_tokens == 300
    seconds = stats.prefill_seconds + stats.decode_seconds
    assert 1 <= len(received) <= 4.0 * seconds + 1


def test_engine_error_is_reported(model, monkeypatch):
    def failing_generate(*args, **kwargs):
        raise minillm.GenerationError("the prompt has 5000 tokens, more than the model's max_position_embeddings")
        yield  # a generator, like LLM.generate

    monkeypatch.setattr(model, "generate", failing_generate)

    async def scenario():
        app = MiniLLMApp(model, max_tokens=10)
        async with app.run_test(size=SIZE) as pilot:
            await generate(app, pilot, "Once")
            assert status(app) == "failed"
            assert any("max_position_embeddings" in n.message for n in app._notifications)
            assert app.is_running

    asyncio.run(scenario())


def test_help_screen_lists_keys(model):
    async def scenario():
        app = MiniLLMApp(model)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("f1")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            text = app.export_screenshot().replace("&#160;", " ")
            assert "stop the running generation" in text
            assert "in the prompt: generate" in text
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, HelpScreen)

    asyncio.run(scenario())


def test_cli_tui_missing_model(tmp_path, capsys):
    assert main(["tui", "--model", str(tmp_path / "missing")]) == 2
    assert "model directory not found" in capsys.readouterr().err


def test_output_wraps_long_text(model):
    async def scenario():
        app = MiniLLMApp(model)
        async with app.run_test(size=SIZE) as pilot:
            view = app.query_one(OutputView)
            view.start("Prompt: ")
            pieces = [f"line {index} " * 8 + "\n" for index in range(40)] + ["\n", "last words"]
            for piece in pieces:
                view.append(piece)
            await pilot.pause()

            width = view.scrollable_content_region.width
            assert all(len(line) <= width for line in view.lines)
            assert len(view.lines) > 42  # each 56-character line wraps in the 50-column pane
            shown = " ".join(" ".join(view.lines).split())
            assert shown == " ".join(("Prompt: " + "".join(pieces)).split())
            assert view.lines[-2:] == ["", "last words"]
            assert view.text == "".join(pieces)
            assert view.is_vertical_scroll_end

            view.start("Again")
            await pilot.pause()
            assert view.lines == ["Again"]

            # A second long text is followed to its end too.
            for piece in pieces:
                view.append(piece)
            await pilot.pause()
            assert view.is_vertical_scroll_end

    asyncio.run(scenario())
