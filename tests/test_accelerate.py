"""dpo and mix train under `accelerate launch` with 2 processes (CPU: DDP over gloo)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_fix_trains_dpo_and_mix_on_two_processes(small_organism):
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "accelerate_check.py"), "--organism",
                          str(small_organism)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "(ok)" in res.stdout, res.stdout + res.stderr[-3000:]
