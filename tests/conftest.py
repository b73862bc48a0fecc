import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import write_checkpoint, write_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random tiny V3 checkpoint with a tokenizer, shared by the tests that only read it."""
    directory = write_checkpoint(tmp_path_factory.mktemp("tiny_v3"))
    write_tokenizer(directory)
    return directory
