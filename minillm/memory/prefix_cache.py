"""Persistent prefix cache: full KV pages on the ssd tier, reused by later runs with the same prefix.

Each page is one file, named by a hash of the model's fingerprint, the page size and every token
id from the start of the sequence to the end of that page, so a hit guarantees the same prefix.
File layout (little-endian): magic b"MINIKV", u16 format version, u32 header length, a JSON
header (fingerprint, page_tokens, shapes, first_position, crc32 of the payload), then the
payload: float32 arrays of those shapes, one after another. The first is the latent KV
(layers, page_tokens, width); a model with Engram layers adds their convolution state
(engram layers, page_tokens, hidden size).

Writes go to a temporary file in the same directory, are fsynced and then renamed over the
final name, so a reader never sees half a page. An exclusive lock file serialises writers and
eviction across processes. A page that is truncated, corrupt (checksum mismatch) or from another
model is skipped with one warning and rewritten by the run that recomputes it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MAGIC = b"MINIKV"
VERSION = 2
_PREFIX = struct.Struct("<6sHI")  # magic, version, header length


class PrefixCacheError(Exception):
    """A page file that cannot be used (internal: it is skipped, never shown as a traceback)."""


def model_fingerprint(directory: Path) -> str:
    """Hash config.json and every weights file's size and safetensors header."""
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.json")) + sorted(directory.glob("*.safetensors")):
        if path.suffix == ".json" and path.name != "config.json":
            continue
        digest.update(path.name.encode())
        if path.suffix == ".json":
            digest.update(path.read_bytes())
            continue
        with open(path, "rb") as f:
            head = f.read(8)
            header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            digest.update(head + f.read(min(header_len, 100 * 1024 * 1024)))
        digest.update(str(path.stat().st_size).encode())
    return digest.hexdigest()


class PrefixCache:
    def __init__(self, directory: Path, fingerprint: str, page_tokens: int, size_limit: int):
        self.root = directory / "prefix"
        self.directory = self.root / fingerprint[:16]
        self.fingerprint = fingerprint
        self.page_tokens = page_tokens
        self.size_limit = size_limit
        self.directory.mkdir(parents=True, exist_ok=True)
        self._warned: set[str] = set()

    def key(self, ids: np.ndarray, page: int) -> str:
        prefix = np.ascontiguousarray(ids[: (page + 1) * self.page_tokens], dtype=np.int64)
        digest = hashlib.sha256(f"{self.fingerprint}:{self.page_tokens}:".encode() + prefix.tobytes())
        return digest.hexdigest()

    def reusable_pages(self, ids: np.ndarray) -> int:
        """Full pages that may come from the cache: the last prompt token is always recomputed,
        because its logits start generation."""
        return max(0, (ids.size - 1) // self.page_tokens)

    @contextmanager
    def _locked(self):
        with open(self.root / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read(self, ids: np.ndarray, page: int, *shapes: tuple[int, ...]) -> list[np.ndarray] | None:
        """Return the cached page's arrays of the given shapes, or None when it is absent or unusable."""
        path = self.directory / f"{self.key(ids, page)}.kvpage"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._warn(path, f"cannot be read ({exc.strerror})")
            return None
        try:
            payload = self._decode(data, [list(shape) for shape in shapes], page)
        except PrefixCacheError as exc:
            self._warn(path, str(exc))
            return None
        os.utime(path)  # recently used: evicted last
        return payload

    def _decode(self, data: bytes, shapes: list[list[int]], page: int) -> list[np.ndarray]:
        if len(data) < _PREFIX.size:
            raise PrefixCacheError("is truncated")
        magic, version, header_len = _PREFIX.unpack_from(data)
        if magic != MAGIC or version != VERSION:
            raise PrefixCacheError(f"has an unknown format (magic {magic!r}, version {version})")
        try:
            header = json.loads(data[_PREFIX.size : _PREFIX.size + header_len])
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise PrefixCacheError("has a corrupt header") from None
        if header.get("fingerprint") != self.fingerprint:
            raise PrefixCacheError("belongs to another model")
        if header.get("shapes") != shapes or header.get("page_tokens") != self.page_tokens or \
                header.get("first_position") != page * self.page_tokens:
            raise PrefixCacheError("has a different page layout")
        payload = data[_PREFIX.size + header_len :]
        sizes = [int(np.prod(shape)) for shape in shapes]
        if len(payload) != sum(sizes) * 4:
            raise PrefixCacheError("is truncated")
        if zlib.crc32(payload) != header.get("crc32"):
            raise PrefixCacheError("is corrupt (checksum mismatch)")
        flat = np.frombuffer(payload, dtype=np.float32)
        ends = np.cumsum(sizes)
        return [flat[end - size : end].reshape(shape) for end, size, shape in zip(ends, sizes, shapes)]

    def _warn(self, path: Path, problem: str) -> None:
        if str(path) not in self._warned:
            self._warned.add(str(path))
            log.warning("prefix cache page %s %s; skipping it and recomputing", path.name, problem)

    def write(self, ids: np.ndarray, page: int, *arrays: np.ndarray) -> int:
        """Store one page's arrays atomically; returns the bytes written."""
        payload = b"".join(np.ascontiguousarray(a, dtype=np.float32).tobytes() for a in arrays)
        header = json.dumps({"fingerprint": self.fingerprint, "page_tokens": self.page_tokens,
                             "shapes": [list(a.shape) for a in arrays], "first_position": page * self.page_tokens,
                             "crc32": zlib.crc32(payload)}).encode()
        blob = _PREFIX.pack(MAGIC, VERSION, len(header)) + header + payload
        path = self.directory / f"{self.key(ids, page)}.kvpage"
        tmp = self.directory / f".{path.stem}.{os.getpid()}.tmp"
        with self._locked():
            with open(tmp, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            self._evict()
        return len(blob)

    def _evict(self) -> None:
        """Delete least recently used pages (of any model) until the cache fits its size limit."""
        files = [(p.stat().st_mtime, p.stat().st_size, p) for p in self.root.glob("*/*.kvpage")]
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.size_limit:
                break
            path.unlink(missing_ok=True)
            total -= size


def list_entries(cache_dir: Path) -> list[dict]:
    """List each model directory in the prefix cache with its pages and bytes."""
    rows = []
    for model_dir in sorted((cache_dir / "prefix").glob("*")):
        if not model_dir.is_dir():
            continue
        pages = list(model_dir.glob("*.kvpage"))
        rows.append({"model": model_dir.name, "pages": len(pages), "bytes": sum(p.stat().st_size for p in pages)})
    return rows


def clear(cache_dir: Path) -> int:
    """Delete every cached page and stale temporary file; returns the number of files removed."""
    root = cache_dir / "prefix"
    if not root.is_dir():
        return 0
    removed = 0
    with open(root / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for path in list(root.glob("*/*.kvpage")) + list(root.glob("*/.*.tmp")):
            path.unlink(missing_ok=True)
            removed += 1
        for model_dir in root.iterdir():
            if model_dir.is_dir() and not any(model_dir.iterdir()):
                model_dir.rmdir()
    return removed
