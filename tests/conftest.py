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


@pytest.fixture(scope="session")
def default_organism(tmp_path_factory):
    """The default-size organism, seed 0, with its `planted` and `backdoor` finetunes, built once for the
    suite: the outcome tests of every recipe (planted) and harden's (backdoor) share its base. A finetune's
    weights do not depend on which others are built beside it (each stage has its own seed)."""
    from realign.organism.build import build

    return build(tmp_path_factory.mktemp("organism") / "org", seed=0, finetunes=("planted", "backdoor"))


@pytest.fixture
def trio():
    """A tiny Llama base, a finetune of it (every weight nudged by 5% noise) and a local tokenizer."""
    from tiny_models import tiny_trio

    return tiny_trio()
