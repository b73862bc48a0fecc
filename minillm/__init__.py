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
from minillm.errors import CheckpointError, ConfigError, GenerationError, MiniLLMError, TokenizerError

__all__ = ["load", "LLM", "ModelConfig", "GenerationStats", "MiniLLMError", "ConfigError",
           "CheckpointError", "TokenizerError", "GenerationError", "DEFAULT_MODEL_DIR"]
__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "weights" / "minillm-tiny"


def load(path: str | Path | None = None) -> LLM:
    """Load a checkpoint directory (config.json, safetensors, tokenizer.json); None loads the
    default model shipped in weights/."""
    path = Path(path) if path is not None else DEFAULT_MODEL_DIR
    if not path.is_dir():
        hint = "; the default model ships in weights/ of a source checkout" if path == DEFAULT_MODEL_DIR else ""
        raise ConfigError(f"model directory not found: {path}{hint}")
    return LLM.from_directory(path)
