"""MiniLLMApp: a prompt, a streaming output pane, and live panels of the memory hierarchy.

Generation runs in a thread worker. It takes a snapshot (`LLM.snapshot()`) and posts it with
the new text at most `refresh_hz` times per second of generation time, however fast the tokens
come.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import replace

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.logging import TextualHandler
from textual.reactive import reactive
from textual.widgets import Footer, Input
from textual.worker import Worker, get_current_worker

import minillm
from minillm.kvcalc import KVCalcError, kv_baselines, kv_cache_size
from tui.help_screen import HelpScreen
from tui.messages import GenerationFailed, GenerationFinished, GenerationProgress
from tui.stats import ENGRAM_COUNTERS, TIER_NAMES, RateMeter, Throttle, has_engram
from tui.widgets import (ControlBar, ExpertGrid, InvalidSetting, OutputView, PageMap, StatsPanel,
                         TierPanel)
from tui.widgets.stats_panel import KVFootprint

log = logging.getLogger(__name__)

# Panel updates per second of generation time. Each costs the generation thread about as much
# time as the app spends repainting; tools/bench_tui.py measures it.
REFRESH_HZ = 4.0
KV_VALUE_BYTES = 4  # the engine caches latent KV values as float32


def kv_footprint(model: minillm.LLM) -> KVFootprint | None:
    """Size the model's KV cache per token with the KV calculator, or None if it cannot."""
    try:
        report = kv_cache_size(model.path, model.config.max_position_embeddings, kv_bytes=KV_VALUE_BYTES)
        baselines = kv_baselines(model.path, kv_bytes=KV_VALUE_BYTES)
    except (minillm.ConfigError, KVCalcError) as exc:
        log.warning("cannot size the KV cache of %s: %s", model.path, exc)
        return None
    return KVFootprint(report.bytes_per_token, baselines.mha_bytes_per_token, KV_VALUE_BYTES)


class MiniLLMApp(App[None]):
    """Generate from a loaded model and watch its tiers, KV pages and experts while it runs."""

    CSS_PATH = "app.tcss"
    TITLE = "minillm"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    BINDINGS = [
        Binding("escape", "stop", "Stop", tooltip="stop the running generation; the app stays open"),
        Binding("f1", "help", "Help", tooltip="show this screen"),
        Binding("ctrl+l", "clear", "Clear", tooltip="clear the output pane"),
        Binding("ctrl+q", "quit", "Quit", tooltip="quit", priority=True),
    ]

    generating: reactive[bool] = reactive(False)

    def __init__(self, model: minillm.LLM, *, temperature: float = 0.8, max_tokens: int = 200,
                 refresh_hz: float = REFRESH_HZ, seed: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.refresh_hz = refresh_hz
        self.seed = seed
        self.meter = RateMeter()
        self._worker: Worker | None = None

    def compose(self) -> ComposeResult:
        memory = self.model.memory.config
        has_mtp = self.model.resolve_speculative("auto") == "mtp"
        yield ControlBar(hbm=minillm_size(memory.hbm), dram=minillm_size(memory.dram),
                         temperature=self.temperature, max_tokens=self.max_tokens,
                         speculative=True if has_mtp else None, id="controls")
        with Horizontal(id="main"):
            with Vertical(id="chat"):
                yield Input(placeholder="Type, then press Enter", id="prompt")
                yield OutputView(id="output")
            with VerticalScroll(id="dashboard"):
                with Vertical(id="tiers"):
                    for tier in TIER_NAMES:
                        yield TierPanel(tier)
                yield PageMap(id="pages")
                yield ExpertGrid(id="experts")
                yield StatsPanel(kv_footprint(self.model), id="stats")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#tiers").border_title = "memory tiers"
        self.query_one("#pages").border_title = "KV pages"
        self.query_one("#experts").border_title = "experts in hbm"
        self.query_one("#stats").border_title = "counters"
        self.query_one("#output").border_title = "output"
        self.query_one("#prompt", Input).focus()
        self._show_idle()
        freeze_heap()

    def on_unmount(self) -> None:
        gc.unfreeze()  # the app's objects become collectable again once it has closed

    def _show_idle(self) -> None:
        """Fill the panels from the model's current state, before any generation."""
        snapshot = self.model.snapshot()
        self.meter.reset(snapshot)
        routing = snapshot["routing"]
        grid = self.query_one(ExpertGrid)
        grid.set_shape(routing["layers"], self.model.config.n_routed_experts or 0)
        grid.start_generation(snapshot)
        self._show_snapshot(snapshot)
        self._set_status("idle")

    def _set_status(self, text: str) -> None:
        # On the prompt rather than the output pane: its border is 3 lines to repaint, not 35.
        self.query_one("#prompt").border_subtitle = text

    # Generation

    @on(Input.Submitted, "#prompt")
    def start_generation(self, event: Input.Submitted) -> None:
        """Apply the controls and start generating from the prompt."""
        if self.generating:
            self.notify("A generation is running: press Esc to stop it first.", severity="warning")
            return
        prompt = event.value
        if not prompt.strip():
            self.notify("The prompt is empty: type some text first.", severity="warning")
            return
        try:
            settings = self.query_one(ControlBar).settings()
        except InvalidSetting as exc:
            self.notify(str(exc), severity="error")
            return
        if not self.apply_budgets():
            return

        self.generating = True
        self.query_one(OutputView).start(prompt)
        baseline = self.model.snapshot()
        self.query_one(ExpertGrid).start_generation(baseline)
        self.meter.reset(baseline)
        self._set_status("generating")
        freeze_heap()
        self._worker = self.generate(prompt, settings.temperature, settings.max_tokens,
                                     "mtp" if settings.speculative else "none")

    @work(thread=True, exclusive=True, group="generation")
    def generate(self, prompt: str, temperature: float, max_tokens: int, speculative: str) -> None:
        """Stream tokens from the engine, posting text and snapshots at most `refresh_hz` times a second.

        With `refresh_hz` 0 nothing is posted until the generation ends."""
        worker = get_current_worker()
        throttle = Throttle(1.0 / self.refresh_hz) if self.refresh_hz > 0 else None
        pending: list[str] = []
        stream = self.model.generate(prompt, max_new_tokens=max_tokens, temperature=temperature,
                                     seed=self.seed, speculative=speculative)
        reason = ""
        try:
            for piece in stream:
                pending.append(piece)
                # The snapshot is taken only when an update is due, rather than by an on_snapshot
                # callback that the engine would call with a fresh snapshot after every token.
                if throttle is not None and throttle.due(generation_seconds(self.model.last_stats)):
                    self.post_message(GenerationProgress(take_text(pending), self.model.snapshot()))
                if worker.is_cancelled:
                    reason = "stopped"
                    break
        except minillm.MiniLLMError as exc:
            log.error("generation failed: %s", exc)
            self.post_message(GenerationFailed(take_text(pending), str(exc)))
            return
        finally:
            stream.close()  # releases the KV pages when the loop stopped early
        self.post_message(GenerationFinished(take_text(pending), self.model.last_snapshot,
                                             reason or self.model.last_stats.finish_reason))

    @on(GenerationProgress)
    def show_progress(self, message: GenerationProgress) -> None:
        # Text and panels change in one handler, so Textual repaints the screen once per update.
        self.query_one(OutputView).append(message.text)
        self._show_snapshot(message.snapshot)
        generated = message.snapshot["generation"]["generated_tokens"]
        self._set_status(f"generating: {generated} tokens")

    @on(GenerationFinished)
    def finish_generation(self, message: GenerationFinished) -> None:
        self.query_one(OutputView).append(message.text)
        self._show_snapshot(message.snapshot)
        generated = message.snapshot["generation"]["generated_tokens"]
        words = {"eos": "end of text", "length": "max tokens", "context": "context full", "stopped": "stopped"}
        self._set_status(f"{words.get(message.reason, message.reason)}: {generated} tokens")
        self.generating = False

    @on(GenerationFailed)
    def fail_generation(self, message: GenerationFailed) -> None:
        self.query_one(OutputView).append(message.text)
        self.notify(message.error, title="Generation failed", severity="error", timeout=10)
        self._set_status("failed")
        self.generating = False

    def _show_snapshot(self, snapshot: dict) -> None:
        rates = self.meter.update(snapshot)
        for name in TIER_NAMES:
            tier = snapshot["tiers"][name]
            self.query_one(f"#tier-{name}", TierPanel).update_tier(
                tier, rates.get(f"{name}.in", 0.0), rates.get(f"{name}.out", 0.0),
                self.meter.series(f"{name}.in"), self.meter.series(f"{name}.out"))
        self.query_one(PageMap).update_map(snapshot.get("page_map", ""), snapshot.get("page_tokens", 0))
        self.query_one(ExpertGrid).update_snapshot(snapshot)
        engram = None  # the panel shows "n/a" for a model without Engram layers
        if has_engram(snapshot):
            engram = {counter: rates.get(counter, 0.0) for counter in ENGRAM_COUNTERS}
        self.query_one(StatsPanel).update_snapshot(snapshot, engram)

    def watch_generating(self, generating: bool) -> None:
        self.query_one(ControlBar).set_budgets_enabled(not generating)
        # A blinking cursor repaints twice a second, work taken from the generation thread.
        self.query_one("#prompt", Input).cursor_blink = not generating

    # Budgets

    @on(Input.Submitted, ".budget")
    def budget_submitted(self) -> None:
        if self.apply_budgets():
            self.notify("Budgets applied.", timeout=2)

    def apply_budgets(self) -> bool:
        """Give the model the hbm and dram budgets of the controls when they changed.

        Returns False, after telling the user why, when a budget is invalid or too small."""
        hbm, dram = self.query_one(ControlBar).budgets()
        current = self.model.memory.config
        try:
            wanted = minillm.MemoryConfig.from_strings(hbm, dram)
            memory = replace(current, hbm=wanted.hbm, dram=wanted.dram)
            if (memory.hbm, memory.dram) == (current.hbm, current.dram):
                return True
            self.model.set_memory(memory)
        except minillm.MemoryConfigError as exc:
            self.notify(str(exc), title="Budget not applied", severity="error", timeout=10)
            return False
        log.info("applied budgets hbm=%d dram=%d bytes", memory.hbm, memory.dram)
        self._show_idle()
        return True

    # Actions

    def action_stop(self) -> None:
        """Cancel the generation worker, which stops when the engine yields its next piece of text."""
        if self._worker is not None and self.generating:
            self._worker.cancel()
            self._set_status("stopping")

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_clear(self) -> None:
        self.query_one(OutputView).clear()


def freeze_heap() -> None:
    """Collect garbage, then exempt every object alive now from the cyclic garbage collector.

    Repaints allocate many container objects, and the full collections that they trigger scan
    the whole heap while holding the GIL that the generation thread needs. In tools/bench_tui.py
    on a 2-core machine these took 100-300 ms each, one or two per 1024 tokens at 4 Hz. Frozen
    objects are still freed by reference counting, but not when they form a reference cycle, so
    this runs right after a collection, and the app unfreezes them when it closes."""
    gc.collect()
    gc.freeze()


def generation_seconds(stats: minillm.GenerationStats) -> float:
    """Seconds of engine time since the generation started, the clock that snapshots use too."""
    return stats.prefill_seconds + stats.decode_seconds


def take_text(pending: list[str]) -> str:
    """Join and clear the text pieces that the worker has collected since its last message."""
    text = "".join(pending)
    pending.clear()
    return text


def minillm_size(size: int) -> str:
    """Format a budget so that MemoryConfig.from_strings reads it back exactly: 536870912 -> '512MiB'."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def run_app(model: minillm.LLM) -> int:
    """Run the app in the terminal until the user quits; log records go to Textual's log, not stderr."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [TextualHandler()]
    try:
        MiniLLMApp(model).run()
    finally:
        root.handlers = saved
    return 0
