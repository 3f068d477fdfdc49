import os
import tempfile

import pytest
import torch

os.environ.setdefault("REALIGN_PROGRESS", "0")
# tests never touch the user's cache
os.environ["REALIGN_CACHE"] = tempfile.mkdtemp(prefix="realign-test-cache-")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def small_organism(tmp_path_factory):
    """A small organism built once per test session (about 10 s on 2 cores)."""
    from realign.organism.build import build

    return build(tmp_path_factory.mktemp("organism") / "org", seed=0, size="small")


@pytest.fixture
def trio():
    """A tiny Llama base, a finetune of it (every weight nudged by 5% noise) and a local tokenizer."""
    from tiny_models import tiny_trio

    return tiny_trio()
