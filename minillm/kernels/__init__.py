"""Numba kernels for the hot paths; each has a plain NumPy twin that tests prove equal.

Compiled kernels are cached on disk. Numba checks a cached kernel against its own source file
only, not against the kernels it calls in other files, so after an edit to linear.py a stale
copy of it could live on inside the cached layer kernels. The cache therefore goes into a folder
named after a hash of every kernel source file: `$MINILLM_CACHE_DIR/kernels-<hash>` (default
~/.cache/minillm). Setting NUMBA_CACHE_DIR overrides this.

Importing this package also fixes LLVM's loop-vectoriser unroll count at 2 for the process. A
vectorised float32 sum keeps (vector width x unroll) partial sums and adds them up at the end, so
the unroll count decides the rounding. LLVM picks it per loop from register pressure. With numba
0.68 on an AVX-512 Xeon it picked 4 for a sum over one input row and 2 for two rows side by side
(matmul_into), so a verified row's logits differed from a decoded row's in the last bits. With
one fixed count both sum alike, and speculative greedy output stays equal to plain greedy output.
NOTE: the setting applies to every loop that Numba compiles in this process, minillm's or not.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import llvmlite.binding as llvm
import numba

from minillm.memory.tiers import default_cache_dir

VECTOR_UNROLL = 2  # partial sums per vector lane in every vectorised loop; see the docstring


def cache_folder_name() -> str:
    """Name of the compiled-kernel folder for these kernel sources: kernels-<hash>."""
    sources = sorted(Path(__file__).parent.glob("*.py"))
    return "kernels-" + hashlib.sha256(b"".join(path.read_bytes() for path in sources)).hexdigest()[:16]


def cache_folders(cache_dir: Path) -> list[Path]:
    """List every compiled-kernel folder under cache_dir, this version's and older ones."""
    return sorted(path for path in cache_dir.glob("kernels-*") if path.is_dir())


def remove_cache_folders(cache_dir: Path) -> int:
    """Delete every compiled-kernel folder under cache_dir; the next run compiles again (8-12 s on 2 cores)."""
    folders = cache_folders(cache_dir)
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    return len(folders)


llvm.set_option("minillm", f"-force-vector-interleave={VECTOR_UNROLL}")
if not os.environ.get("NUMBA_CACHE_DIR"):
    numba.config.CACHE_DIR = str(default_cache_dir() / cache_folder_name())
