import os
import sys
from pathlib import Path

# No test reaches the network: hub ids fail (or resolve from the cache) at once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Prepared training data (layra.prepare) goes to a cache of this session, not ~/.cache.
if "LAYRA_DATA_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["LAYRA_DATA_CACHE"] = tempfile.mkdtemp(prefix="layra-test-data-")
    atexit.register(shutil.rmtree, os.environ["LAYRA_DATA_CACHE"], ignore_errors=True)

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny  # noqa: E402


@pytest.fixture(scope="session")
def tok():
    return tiny.make_tokenizer()


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """One saved tiny model (with tokenizer) per architecture, built once per session."""
    root = tmp_path_factory.mktemp("models")
    return {a: tiny.save_model(root / a, a) for a in tiny.ARCHS}


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for lang in tiny.TEXT:
        tiny.write_corpus(root / f"{lang}.txt", lang)
    return root
