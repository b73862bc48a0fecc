"""The ssd tier's page store: fixed-size slots in a real file, accessed through numpy.memmap.

Each generation's file is named kv-spill-<pid>-<random>.bin and deleted when the generation ends.
A process killed with SIGKILL cannot delete its file, so new spill files and `minillm cache clear`
first remove the files of processes that no longer run.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class SpillFile:
    """Slots of `page_shape` float32 values in a temporary file under `directory`, deleted on close."""

    def __init__(self, directory: Path, page_shape: tuple[int, ...], initial_slots: int = 8):
        self.page_shape = page_shape
        self.page_bytes = int(np.prod(page_shape)) * 4
        directory.mkdir(parents=True, exist_ok=True)
        remove_stale_spill_files(directory)
        handle, name = tempfile.mkstemp(prefix=f"kv-spill-{os.getpid()}-", suffix=".bin", dir=directory)
        os.close(handle)
        self.path = Path(name)
        self.slots = 0
        self.free: list[int] = []
        self.map: np.memmap | None = None
        self._grow(initial_slots)

    def _grow(self, slots: int) -> None:
        if self.map is not None:
            self.map.flush()
            del self.map
        with open(self.path, "r+b") as f:
            f.truncate(slots * self.page_bytes)
        self.map = np.memmap(self.path, dtype=np.float32, mode="r+", shape=(slots,) + self.page_shape)
        self.free.extend(range(self.slots, slots))
        self.slots = slots

    def allocate(self) -> int:
        if not self.free:
            self._grow(2 * self.slots)
        return self.free.pop()

    def release(self, slot: int) -> None:
        self.free.append(slot)

    def close(self) -> None:
        if self.map is not None:
            del self.map
            self.map = None
        try:
            self.path.unlink()
        except OSError as exc:
            log.warning("could not delete the KV spill file %s: %s", self.path, exc)


def _owner_alive(path: Path) -> bool:
    """Check whether the process that named this spill file still runs (False for unparsable names)."""
    parts = path.name.split("-")
    if len(parts) < 4 or not parts[2].isdigit():
        return False
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it runs, under another user
    return True


def remove_stale_spill_files(directory: Path) -> int:
    """Delete spill files whose process no longer runs; returns how many were deleted."""
    removed = 0
    for path in directory.glob("kv-spill-*.bin"):
        if not _owner_alive(path):
            try:
                path.unlink()
                removed += 1
            except OSError as exc:
                log.warning("could not delete the stale KV spill file %s: %s", path, exc)
    return removed
