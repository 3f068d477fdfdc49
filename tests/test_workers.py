"""`realign bench --workers N`: cells as submitit jobs (local processes here), scheduled so that one
finetune's base and finetune are evaluated once, failures reported after the others finished."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from realign.errors import RealignError
from realign.runs import workers
from realign.runs.bench import Cell, Finetune
from realign.runs.fix import FixOptions
from realign.runs.workers import WorkerSettings, _next, parse_params, run_bench_on_workers


def _cell(tmp_path: Path, ft: str, seed: int, recipe: str, done: bool = False) -> Cell:
    out = tmp_path / "cells" / ft / f"s{seed}" / recipe
    if done:
        out.mkdir(parents=True)
        (out / "realign.json").write_text("{}")
    return Cell(Finetune(ft, lambda s: (f"/models/{ft}", None)), seed, recipe, out)


def test_a_cold_finetune_runs_alone_until_its_evaluations_are_cached(tmp_path):
    a_merge, a_steer, b_merge = (_cell(tmp_path, "a", 0, "merge"), _cell(tmp_path, "a", 0, "steer"),
                                 _cell(tmp_path, "b", 0, "merge"))
    # a's first cell is in flight, nothing of a finished: its sibling waits, another finetune goes
    assert _next([a_steer, b_merge], [a_merge], warm=set()) is b_merge
    assert _next([a_steer], [a_merge], warm=set()) is None
    # once a cell of (a, seed 0) finished, base and finetune come from the cache: siblings go together
    assert _next([a_steer], [a_merge], warm={("a", 0)}) is a_steer
    # another seed is another evaluation
    a1 = _cell(tmp_path, "a", 1, "merge")
    assert _next([a1], [a_merge], warm={("a", 0)}) is a1


def test_cluster_settings_are_checked_in_one_line():
    assert parse_params(["slurm_partition=gpu", "gpus_per_node=1", "mem_gb=40.5"]) == \
        {"slurm_partition": "gpu", "gpus_per_node": 1, "mem_gb": 40.5}
    with pytest.raises(RealignError, match="KEY=VALUE"):
        parse_params(["slurm_partition"])
    with pytest.raises(RealignError, match="--workers must be at least 1"):
        WorkerSettings(0).validate()
    with pytest.raises(RealignError, match="--cluster must be one of local, slurm"):
        WorkerSettings(2, "kubernetes").validate()
    assert WorkerSettings(2, "local").threads() == max(1, (os.cpu_count() or 1) // 2)
    assert WorkerSettings(2, "slurm").threads() is None


def test_bad_submitit_parameters_fail_before_any_cell(tmp_path):
    with pytest.raises(RealignError, match="--cluster-set"):
        workers.executor(tmp_path, WorkerSettings(2, "local", {"no_such_parameter": 1}))


class _InlineJob:
    """A finished submitit job stand-in: result() runs the cell here (or raises its error)."""

    def __init__(self, fn, args, n):
        self.fn, self.args, self.job_id = fn, args, str(n)
        self.paths = type("Paths", (), {"stderr": Path(f"/logs/{n}_0_log.err")})()

    def done(self):
        return True

    def result(self):
        return self.fn(*self.args)


class _InlineExecutor:
    def __init__(self):
        self.submitted = 0

    def submit(self, fn, *args):
        self.submitted += 1
        return _InlineJob(fn, args, self.submitted)


def test_a_failed_cell_is_reported_after_the_others_ran(tmp_path, monkeypatch):
    ran = []

    def fake_run_cell(run, threads):
        if run.recipe == "steer":
            raise RuntimeError("steer broke")
        ran.append(run.recipe)
        run.out.mkdir(parents=True)
        (run.out / "realign.json").write_text("{}")

    monkeypatch.setattr(workers, "run_cell", fake_run_cell)
    monkeypatch.setattr(workers, "executor", lambda out, s: _InlineExecutor())
    cells = [_cell(tmp_path, "a", 0, r) for r in ("merge", "steer", "freeze")]
    done = []
    with pytest.raises(RealignError, match=r"1 bench cell\(s\) failed: a · seed 0 · steer: steer broke \(log /logs/"):
        run_bench_on_workers(cells, [], FixOptions(), tmp_path, WorkerSettings(2, poll_s=0.01),
                             on_cell_done=lambda: done.append(1))
    assert sorted(ran) == ["freeze", "merge"] and len(done) == 2
    # a rerun skips what finished and tries the failed cell again
    monkeypatch.setattr(workers, "run_cell", lambda run, threads: ran.append(run.recipe))
    counts = run_bench_on_workers(cells, [], FixOptions(), tmp_path, WorkerSettings(2, poll_s=0.01))
    assert counts == {"skipped": 2, "run": 1, "failed": 0} and ran[-1] == "steer"


BENCH = ["bench", "--organism", "--organism-size", "small", "--samples", "1"]


def _organism_root(tmp_path: Path, small_organism) -> str:
    """--organism-dir for the session's small organism (seed 0), built once for every test."""
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "s0").symlink_to(small_organism)
    return str(tmp_path / "org")


@pytest.mark.slow
def test_two_local_workers_run_cells_at_once_and_share_the_cache(tmp_path, small_organism):
    """Two finetunes (cold: nothing cached) start at once on two worker processes; their second
    recipes reuse the evaluations the first ones cached; the board is the in-process one's."""
    env = {**os.environ, "REALIGN_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "bench"
    args = [*BENCH, "--organism-dir", _organism_root(tmp_path, small_organism), "--organism-finetunes", "planted,insecure",
            "--recipes", "merge,steer", "--out", str(out), "--workers", "2"]
    res = subprocess.run([sys.executable, "-m", "realign.cli", *args], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    log = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("cell ")]
    first_done = next(i for i, line in enumerate(log) if line.endswith(")") and ": done (" in line)
    started_before = [line for line in log[:first_done] if ": job " in line]
    assert len(started_before) == 2 and {"planted", "insecure"} == {line.split()[1] for line in started_before}
    base_evaluated = 0
    for ft in ("planted", "insecure"):
        cells = {r: json.loads((out / "cells" / ft / "s0" / r / "realign.json").read_text()) for r in ("merge", "steer")}
        base_evaluated += sum("base" not in c["evaluation"]["cached"] for c in cells.values())
        # one cell evaluated the finetune, its sibling reused it. (Not "nothing cached" for the first:
        # both finetunes share the base, so whichever first cell reached the base second may read
        # the other's cached base evaluation — a race, not a fault.)
        cached_finetune = sorted("finetune" in c["evaluation"]["cached"] for c in cells.values())
        assert cached_finetune == [False, True]
        assert all("base" in cells[r]["evaluation"]["cached"] for r in ("merge", "steer")
                   if "finetune" in cells[r]["evaluation"]["cached"])
        assert cells["merge"]["metrics"]["repaired"]["logodds"] < cells["merge"]["metrics"]["finetune"]["logodds"]
    assert 1 <= base_evaluated <= 2          # the shared base: evaluated by one first cell, or both at once
    board = json.loads((out / "leaderboard.json").read_text())
    assert set(board) == {"planted", "insecure"} and set(board["planted"]["rows"]) == {"base", "finetune", "merge", "steer"}
    assert list((out / "workers").glob("*/*_log.err"))        # each job's log, where failures point


@pytest.mark.slow
def test_slurm_workers_through_a_stand_in_slurm(tmp_path, small_organism):
    """--cluster slurm end to end against tests/fake_slurm.py (sbatch/srun/sacct/scancel on this machine):
    the submitit parameters reach the sbatch file, the job runs the cell, the driver sees it finish."""
    from fake_slurm import install

    env = {**os.environ, "REALIGN_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1",
           **install(tmp_path / "bin", tmp_path / "slurm")}
    out = tmp_path / "bench"
    args = [*BENCH, "--organism-dir", _organism_root(tmp_path, small_organism), "--organism-finetunes", "planted",
            "--recipes", "merge",
            "--out", str(out), "--workers", "2", "--cluster", "slurm", "--cluster-set", "slurm_partition=test"]
    res = subprocess.run([sys.executable, "-m", "realign.cli", *args], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    cell = json.loads((out / "cells" / "planted" / "s0" / "merge" / "realign.json").read_text())
    assert cell["metrics"]["repaired"]["logodds"] < cell["metrics"]["finetune"]["logodds"]
    sbatch = [p.read_text() for p in (out / "workers").rglob("*_submission.sh")]
    assert len(sbatch) == 1 and "#SBATCH --partition=test" in sbatch[0] and "srun --unbuffered" in sbatch[0]
    assert (tmp_path / "slurm" / "1000.rc").read_text() == "0"      # the stand-in ran it as job 1000
