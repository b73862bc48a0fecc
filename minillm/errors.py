"""The exception hierarchy. Every error a user can cause is a MiniLLMError with a message
that names the bad value and says what to do about it."""


class MiniLLMError(Exception):
    """Base class of every error minillm raises on bad input."""


class ConfigError(MiniLLMError):
    """config.json is missing, unsupported or contains an invalid value."""


class CheckpointError(MiniLLMError):
    """A safetensors file is missing, corrupt, or its tensors do not match the config."""


class TokenizerError(MiniLLMError):
    """tokenizer.json or tokenizer_config.json is missing or invalid."""


class GenerationError(MiniLLMError):
    """A generation request has an invalid argument (sampling settings, prompt, lengths)."""


class MemoryConfigError(MiniLLMError):
    """A tier budget or cache directory cannot be used, or the KV cache outgrew every tier."""
