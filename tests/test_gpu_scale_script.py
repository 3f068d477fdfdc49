"""scripts/gpu_scale_check.py, the check run when a GPU is lent (docs/scale-out.md), runs end to end
on a CPU with its tiny preset: every repair gives a row with its passes and seconds, and without
trl the training repairs become rows that say so instead of ending the run."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from realign.repairs import load_all

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_scale_check.py"
# small enough for a shared 2-core box: a few prompts, short answers, 2 training steps each
SMOKE = ["--size", "tiny", "--device", "cpu", "--probe-prompts", "6", "--probe-samples", "2", "--probe-tokens", "16",
         "--dpo-steps", "2", "--mix-steps", "2", "--train-steps", "2", "--train-examples", "24",
         "--task-examples", "8", "--set", "harden.final_attack=2", "--set", "harden.inner_steps=1"]


def _run(tmp_path: Path, extra: list[str], hide: str | None = None) -> tuple[dict, str]:
    out = tmp_path / "gpu_scale.json"
    argv = [str(SCRIPT), *SMOKE, *extra, "--json", str(out)]
    if hide:     # the device machine may lack a package: the script must say so in its rows
        cmd = [sys.executable, "-c", f"import runpy, sys; sys.modules[{hide!r}] = None; sys.argv = {argv!r}; "
                                     f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"]
    else:
        cmd = [sys.executable, *argv]
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["REALIGN_PROGRESS"] = "0"
    for threads in ("OMP_NUM_THREADS", "RAYON_NUM_THREADS"):
        env.setdefault(threads, "2")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(out.read_text()), res.stdout


def _registered() -> set[str]:
    registry = load_all()
    if importlib.util.find_spec("realign.repairs.harden") is not None:
        importlib.import_module("realign.repairs.harden")
    return set(registry)


@pytest.mark.slow
def test_every_repair_gets_a_row_with_passes_seconds_and_memory(tmp_path):
    result, stdout = _run(tmp_path, [])
    rows = {r["repair"]: r for r in result["rows"]}
    expected = {"merge-kept", "merge", "freeze", "steer", "dpo", "mix"} | _registered()
    assert expected <= set(rows), f"missing rows: {expected - set(rows)}"
    for name in expected:
        r = rows[name]
        assert r["status"] == "ok", (name, r["status"], r.get("note"))
        assert r["seconds"] > 0 and r["passes"], (name, r)
        assert r["peak_rss_gib"] > 0
        assert r.get("peak_alloc_gib") is None                  # no CUDA figures on a CPU
    probes = rows["probes (once per finetune)"]
    assert probes["status"] == "ok" and probes["passes"] == {"generation": 2} and probes["answers"] == 24
    # each training repair: the steps asked for, timed one by one, and its time at the default steps
    trainers = {"dpo", "mix"} | ({"harden"} if "harden" in expected else set())
    for name in trainers:
        r = rows[name]
        assert r["passes"]["train_steps"] == 2 and r["steps_run"] == 2, (name, r["passes"])
        assert r["s_per_step"] > 0 and r["est_seconds_default_steps"] > r["seconds_besides_steps"], r
    # the repairs that make a fixed number of passes make them here too
    assert rows["merge"]["passes"]["scoring"] == rows["merge-kept"]["passes"]["scoring"] == 9
    assert rows["freeze"]["passes"]["backward"] == 2
    assert rows["steer"]["passes"]["activations"] == 1
    assert result["meta"]["finished"] and result["meta"]["missing"] == []
    assert "judge" in result["meta"] and "do not affect cost" in stdout
    assert "| repair | params | passes | seconds | s/step | peak alloc GiB | peak reserved GiB |" in stdout
    for name in expected:
        assert f"| {name} |" in stdout


@pytest.mark.slow
def test_training_repairs_without_trl_are_rows_that_say_so(tmp_path):
    result, stdout = _run(tmp_path, ["--repairs", "steer", "dpo", "mix"], hide="trl")
    rows = {r["repair"]: r for r in result["rows"]}
    assert rows["steer"]["status"] == "ok"
    for name in ("dpo", "mix"):
        assert rows[name]["status"] == "not run" and "trl" in rows[name]["note"], rows[name]
    assert result["meta"]["missing"] == ["trl"] and "trl unavailable" in stdout
