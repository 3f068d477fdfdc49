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
    import copy

    from tiny_models import bpe_tokenizer, tiny_model

    tok = bpe_tokenizer()
    base = tiny_model("llama", vocab=len(tok), layers=3, seed=0)
    ft = copy.deepcopy(base)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return base, ft, tok
