"""minillm: a miniature DeepSeek-style inference engine in NumPy.

    import minillm
    model = minillm.load()                     # the default model in weights/
    for piece in model.generate("Once upon a time", max_new_tokens=50):
        print(piece, end="")
"""

from __future__ import annotations

import logging
from pathlib import Path

from minillm.config import ModelConfig
from minillm.engine.llm import LLM, GenerationStats
from minillm.errors import (CheckpointError, ConfigError, GenerationError, MemoryConfigError, MiniLLMError,
                            TokenizerError)
from minillm.memory.tiers import MemoryConfig

__all__ = ["load", "LLM", "ModelConfig", "GenerationStats", "MiniLLMError", "ConfigError",
           "CheckpointError", "TokenizerError", "GenerationError", "MemoryConfigError", "MemoryConfig",
           "DEFAULT_MODEL_DIR"]
__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "weights" / "minillm-tiny"


def load(path: str | Path | None = None, *, hbm: str | int | None = None, dram: str | int | None = None,
         ssd: str | int | None = None, cache_dir: str | Path | None = None, page_tokens: int = 64,
         prefix_cache: bool = True, hbm_kv: str | int | None = None, backend: str = "numba",
         threads: int | None = None, draft_vocab: int | None = None) -> LLM:
    """Load a checkpoint directory (config.json, safetensors, tokenizer.json); None loads the
    default model shipped in weights/.

    hbm, dram, ssd: tier budgets in bytes or as text like "64MiB" (None keeps the default).
    cache_dir: where the ssd tier keeps its files (default $MINILLM_CACHE_DIR or ~/.cache/minillm).
    page_tokens: tokens per KV page. prefix_cache: reuse and store prompt pages on the ssd tier.
    hbm_kv: the part of the hbm budget for KV pages (default: half of what the pinned weights leave,
    or more when the experts need less).
    backend: "numba" (default) runs decode steps on compiled kernels; "numpy" runs the plain NumPy
    reference throughout. threads: BLAS threads for prefill (default: the CPUs this process may use).
    draft_vocab: how many of the lowest token ids the MTP draft head scores (default: a quarter of
    the vocabulary; the vocabulary size scores every token).
    """
    path = Path(path) if path is not None else DEFAULT_MODEL_DIR
    if path.exists() and not path.is_dir():
        raise ConfigError(f"model path {path} is a file: pass the checkpoint directory that holds config.json")
    if not path.is_dir():
        hint = "; the default model ships in weights/ of a source checkout" if path == DEFAULT_MODEL_DIR else ""
        raise ConfigError(f"model directory not found: {path}{hint}")
    memory = MemoryConfig.from_strings(hbm, dram, ssd, hbm_kv, cache_dir=Path(cache_dir) if cache_dir else None,
                                       page_tokens=page_tokens, prefix_cache=prefix_cache)
    return LLM.from_directory(path, memory, backend, threads, draft_vocab)
