"""Numba kernels for the hot paths; each has a plain NumPy twin that tests prove equal.

Compiled kernels are cached on disk. Numba checks a cached kernel against its own source file
only, not against the kernels it calls in other files, so after an edit to linear.py a stale
copy of it could live on inside the cached layer kernels. The cache therefore goes into a folder
named after a hash of every kernel source file: `$MINILLM_CACHE_DIR/kernels-<hash>` (default
~/.cache/minillm). Setting NUMBA_CACHE_DIR overrides this.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numba


def _cache_dir() -> Path:
    sources = sorted(Path(__file__).parent.glob("*.py"))
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in sources)).hexdigest()[:16]
    root = Path(os.environ.get("MINILLM_CACHE_DIR") or Path.home() / ".cache" / "minillm")
    return root / f"kernels-{digest}"


if not os.environ.get("NUMBA_CACHE_DIR"):
    numba.config.CACHE_DIR = str(_cache_dir())
