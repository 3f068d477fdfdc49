import os

import pytest
import torch

os.environ.setdefault("REALIGN_PROGRESS", "0")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def small_organism(tmp_path_factory):
    """A small organism built once per test session (about 10 s on 2 cores)."""
    from realign.organism.build import build

    return build(tmp_path_factory.mktemp("organism") / "org", seed=0, size="small")
