"""Messages that the generation worker thread posts to the app."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message


@dataclass
class TextGenerated(Message):
    """Text decoded since the previous TextGenerated message."""

    text: str


@dataclass
class StatsUpdated(Message):
    """The latest statistics snapshot of the running generation (`LLM.snapshot()`)."""

    snapshot: dict

    def can_replace(self, message: Message) -> bool:
        # Only the newest snapshot matters, so a queued older one is dropped.
        return isinstance(message, StatsUpdated)


@dataclass
class GenerationFinished(Message):
    """The generation ended: `reason` is "eos", "length", "context" or "stopped"."""

    snapshot: dict
    reason: str


@dataclass
class GenerationFailed(Message):
    """The engine raised an error during the generation."""

    error: str
