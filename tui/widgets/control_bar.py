"""The generation controls: tier budgets, temperature, max tokens and speculative decoding."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Checkbox, Input, Label


@dataclass(frozen=True)
class GenerationSettings:
    """The controls' values as text for the budgets and as numbers for the sampling options."""

    hbm: str
    dram: str
    temperature: float
    max_tokens: int
    speculative: bool


class InvalidSetting(ValueError):
    """A control contains a value that cannot be used; the message names the control."""


class ControlBar(Horizontal):
    """One row of labelled inputs; the app reads them with `settings()` when a generation starts."""

    def __init__(self, hbm: str, dram: str, temperature: float, max_tokens: int, speculative: bool | None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self._initial = (hbm, dram, temperature, max_tokens, speculative)

    def compose(self) -> ComposeResult:
        hbm, dram, temperature, max_tokens, speculative = self._initial
        yield Label("hbm")
        yield Input(hbm, id="hbm", classes="budget", tooltip="hbm budget, like 64MiB; Enter applies it")
        yield Label("dram")
        yield Input(dram, id="dram", classes="budget", tooltip="dram budget, like 2GiB; Enter applies it")
        yield Label("temp")
        yield Input(str(temperature), id="temperature", type="number", tooltip="sampling temperature; 0 is greedy")
        yield Label("max")
        yield Input(str(max_tokens), id="max-tokens", type="integer", tooltip="tokens to generate")
        checkbox = Checkbox("MTP", bool(speculative), id="speculative",
                            tooltip="speculative decoding with the checkpoint's MTP module")
        # None: the checkpoint has no MTP module, so the box stays off.
        checkbox.disabled = speculative is None
        yield checkbox

    def settings(self) -> GenerationSettings:
        """Read and check the controls; raises InvalidSetting naming the control and the fix."""
        temperature_text = self.query_one("#temperature", Input).value.strip()
        try:
            temperature = float(temperature_text)
        except ValueError:
            raise InvalidSetting(f"invalid temperature {temperature_text!r}: use a number such as 0.8") from None
        if temperature < 0:
            raise InvalidSetting(f"invalid temperature {temperature}: use 0 (greedy) or more")

        max_text = self.query_one("#max-tokens", Input).value.strip()
        try:
            max_tokens = int(max_text)
        except ValueError:
            raise InvalidSetting(f"invalid max tokens {max_text!r}: use a whole number such as 200") from None
        if max_tokens < 1:
            raise InvalidSetting(f"invalid max tokens {max_tokens}: use 1 or more")

        hbm, dram = self.budgets()
        return GenerationSettings(hbm=hbm, dram=dram, temperature=temperature, max_tokens=max_tokens,
                                  speculative=self.query_one("#speculative", Checkbox).value)

    def budgets(self) -> tuple[str, str]:
        """Return the hbm and dram budgets as typed, for MemoryConfig.from_strings to parse."""
        return self.query_one("#hbm", Input).value.strip(), self.query_one("#dram", Input).value.strip()

    def set_budgets_enabled(self, enabled: bool) -> None:
        """Budgets change only between generations, so the app locks them while one runs."""
        for field in self.query(".budget"):
            field.disabled = not enabled
