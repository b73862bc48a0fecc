"""Messages that the generation worker thread posts to the app.

Each message carries the text decoded since the previous one, so none may be dropped, and none
defines `can_replace`. The worker posts at most `refresh_hz` progress messages per second of
generation time, so they cannot pile up.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message


@dataclass
class GenerationProgress(Message):
    """New text and the latest statistics snapshot (`LLM.snapshot()`) of the running generation."""

    text: str
    snapshot: dict


@dataclass
class GenerationFinished(Message):
    """The generation ended: `reason` is "eos", "length", "context" or "stopped"."""

    text: str
    snapshot: dict
    reason: str


@dataclass
class GenerationFailed(Message):
    """The engine raised an error during the generation."""

    text: str
    error: str
