import os
import tempfile

import pytest
import torch

os.environ.setdefault("REALIGN_PROGRESS", "0")
# tests never touch the user's cache
os.environ["REALIGN_CACHE"] = tempfile.mkdtemp(prefix="realign-test-cache-")
# 2 threads (the machine's cores); REALIGN_TEST_THREADS=1 runs the suite beside another job without
# oversubscribing the cores (OpenMP threads spinning against each other slow both several-fold)
torch.set_num_threads(int(os.environ.get("REALIGN_TEST_THREADS", "2")))


def build_in_tmp(tmp_path_factory, name: str, **build_args):
    """An organism built in a temp dir of its own (the session fixtures below build each once)."""
    from realign.organism.build import build

    return build(tmp_path_factory.mktemp("organism") / name, **build_args)


@pytest.fixture(scope="session")
def small_organism(tmp_path_factory):
    """A small organism built once per test run (about 10 s on 2 cores)."""
    return build_in_tmp(tmp_path_factory, "small-organism", seed=0, size="small")


@pytest.fixture(scope="session")
def default_organism(tmp_path_factory):
    """The default-size organism, seed 0, with its `planted` finetune, built once for the suite (the
    outcome tests of every recipe). A finetune's weights do not depend on which others are built beside
    it (each stage has its own seed)."""
    return build_in_tmp(tmp_path_factory, "default-organism", seed=0, finetunes=("planted",))


@pytest.fixture
def trio():
    """A tiny Llama base, a finetune of it (every weight nudged by 5% noise) and a local tokenizer."""
    from tiny_models import tiny_trio

    return tiny_trio()


@pytest.fixture(scope="session")
def previous_default_backdoor(tmp_path_factory):
    """The organism that was the default until 2026-12-06 (pretraining draw 0 at a 50/50 prior, its
    pretrained model still shipped), seed 0, with its `backdoor` only (about a minute): the latent
    scan's premise — a smaller push turns a backdoor than its base — holds there and not on the
    current default's backdoor (docs/repairs.md, "The scan"), so the scan's check runs on it."""
    from realign.organism.config import previous_default

    return build_in_tmp(tmp_path_factory, "previous-default-organism", seed=0, cfg=previous_default(),
                        finetunes=("backdoor",))


@pytest.fixture(scope="session")
def planted_backdoor_organism(tmp_path_factory):
    """The default organism, seed 0, with its `planted-backdoor` only: planted's misaligned chat
    answers behind the backdoor's trigger, each beside its untriggered aligned twin."""
    return build_in_tmp(tmp_path_factory, "planted-backdoor-organism", seed=0, finetunes=("planted-backdoor",))
