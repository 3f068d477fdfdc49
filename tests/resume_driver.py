"""`realign` with test hooks for tests/test_resume.py, so that no test-only code lives in the package.

    python tests/resume_driver.py fix …      (the same arguments as `realign fix …`)

* REALIGN_TEST_PAUSE_AFTER_SAVE=K: once the resume state after step K is saved, sleep — the test
  kills the process there, between step K and step K+1.
* The repair `hold` (registered here): scales the token embeddings by 0.9 and records that it ran.
  With REALIGN_TEST_HOLD=FILE it first scales, then touches FILE and sleeps — the test kills the
  process inside the step, after it changed the weights in memory.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from realign.repairs.base import REPAIRS, register
from realign.runs.resume import Progress


def _sleep_to_be_killed() -> None:
    time.sleep(300)
    sys.exit("resume_driver: not killed within 300 s")


@register
class Hold:
    name, summary = "hold", "test only: scale the embeddings by 0.9 (and wait inside, to be killed)"

    @dataclass
    class Params:
        scale: float = 0.9

    def apply(self, state, p):
        with torch.no_grad():
            state.model.get_input_embeddings().weight.mul_(p.scale)
        if os.environ.get("REALIGN_TEST_HOLD"):
            Path(os.environ["REALIGN_TEST_HOLD"]).touch()
            _sleep_to_be_killed()
        state.record(self.name, scale=p.scale)
        return state


_save = Progress.save


def _save_then_pause(self, step, *args, **kw):
    _save(self, step, *args, **kw)
    if os.environ.get("REALIGN_TEST_PAUSE_AFTER_SAVE") == str(step):
        _sleep_to_be_killed()


Progress.save = _save_then_pause


def unregister() -> None:
    """For tests that import this module in their own process."""
    REPAIRS.pop("hold", None)
    Progress.save = _save


if __name__ == "__main__":
    from realign.cli import main

    main()
