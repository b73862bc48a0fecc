import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import write_checkpoint, write_tokenizer  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def private_cache_dir(tmp_path_factory):
    """Point the default cache directory at a temporary one, so tests never write to the user's."""
    directory = tmp_path_factory.mktemp("minillm-cache")
    previous = os.environ.get("MINILLM_CACHE_DIR")
    os.environ["MINILLM_CACHE_DIR"] = str(directory)
    yield directory
    if previous is None:
        del os.environ["MINILLM_CACHE_DIR"]
    else:
        os.environ["MINILLM_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random tiny V3 checkpoint with a tokenizer, shared by the tests that only read it."""
    directory = write_checkpoint(tmp_path_factory.mktemp("tiny_v3"))
    write_tokenizer(directory)
    return directory
