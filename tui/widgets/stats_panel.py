"""Throughput, MTP, engram and prefix-cache counters, and the KV bytes per token against MHA."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.widget import Widget

from minillm.memory.sizes import format_size


LABEL_WIDTH = 9  # "KV/token" and a space


@dataclass(frozen=True)
class KVFootprint:
    """KV cache bytes per token of the loaded model and of an MHA model of the same width."""

    model_bytes_per_token: float
    mha_bytes_per_token: float
    kv_bytes: float  # bytes per cached value that both figures assume


class _Rows:
    """Rows of a dimmed label padded to LABEL_WIDTH and a value."""

    def __init__(self) -> None:
        self.text = Text(no_wrap=True, overflow="ellipsis")

    def add_row(self, label: str, value: str | Text) -> None:
        if self.text:
            self.text.append("\n")
        self.text.append(label.ljust(LABEL_WIDTH), style="dim")
        self.text.append_text(value if isinstance(value, Text) else Text(value))


def _number(value: float | None, suffix: str = "", digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}{suffix}"


class StatsPanel(Widget):
    """Counters of the latest snapshot, one row per label.

    The rows are plain Text with padded labels rather than a rich Table, which costs several
    times more to render on every refresh."""

    def __init__(self, footprint: KVFootprint | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.footprint = footprint
        self.snapshot: dict = {}
        self.engram_rates: dict[str, float] | None = None

    def update_snapshot(self, snapshot: dict, engram_rates: dict[str, float] | None) -> None:
        """Show `snapshot` and the per-second rates of its Engram counters (None: no Engram layers)."""
        self.snapshot, self.engram_rates = snapshot, engram_rates
        self.refresh()  # always the same rows, so no layout pass

    def render(self) -> Text:
        generation = self.snapshot.get("generation", {})
        table = _Rows()

        prefill = generation.get("prefill_tokens_per_second") if generation.get("generated_tokens") else None
        decode = generation.get("decode_tokens_per_second") if generation.get("generated_tokens", 0) > 1 else None
        table.add_row("tokens/s", f"prefill {_number(prefill)}  decode {_number(decode)}")
        table.add_row("tokens", f"prompt {generation.get('prompt_tokens', 0)}  "
                                f"generated {generation.get('generated_tokens', 0)}")

        if not generation.get("generated_tokens"):
            mtp = "n/a"
        elif generation.get("speculative", "none") == "mtp":
            mtp = (f"accepted {100 * generation.get('acceptance_rate', 0.0):.1f}%  "
                   f"tokens/forward {generation.get('tokens_per_forward', 0.0):.2f}")
        else:
            mtp = "off"
        table.add_row("MTP", mtp)

        engram = self.engram_rates or {}
        lookups = engram.get("engram_lookups")
        rows = engram.get("engram_rows")
        table.add_row("engram", f"lookups/s {_number(lookups)}  rows/s {_number(rows)}")
        # Hit tokens are this generation's; written pages count since the budgets were applied.
        table.add_row("prefix", f"hit tokens {generation.get('prefix_cache_hit_tokens', 0)}  "
                                f"pages written {self.snapshot.get('prefix_cache_written_pages', 0)}")
        table.add_row("KV/token", self._footprint_text())
        return table.text

    def _footprint_text(self) -> Text:
        if self.footprint is None:
            return Text("n/a", style="dim")
        model, mha = self.footprint.model_bytes_per_token, self.footprint.mha_bytes_per_token
        text = Text(format_size(round(model)), style="bold")
        text.append(f"  MHA {format_size(round(mha))}")
        if model:
            text.append(f"  ({mha / model:.1f}x less)", style="green")
        return text
