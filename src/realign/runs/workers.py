"""`realign bench --workers N`: bench cells on submitit workers instead of one after another here.

Each cell is one `fix` in its own job — a process on this machine (`--cluster local`) or a SLURM job
(`--cluster slurm`, any number of machines) — through submitit (the `cluster` extra). This process
stays the driver: it builds the organisms and locates the finetunes (never two builders of one
organism), submits at most N cells at a time, rebuilds the leaderboard as each cell finishes, and
reports failed cells with their logs at the end instead of stopping the others. What the workers
share is the file system: the cells' output dirs, and the evaluation and probe cache
($REALIGN_CACHE, written atomically), which a SLURM cluster must see at the same path.

Scheduling: a cell whose base and finetune are not evaluated yet (no finished cell of that finetune
and seed) runs alone among its siblings; the others wait for its evaluations in the cache rather
than repeat them. Resume as in-process: finished cells are skipped. Ctrl-C cancels the cells in flight.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RealignError
from ..progress import console
from .bench import Cell, CellRun, resolve, unfinished
from .fix import FixOptions

CLUSTERS = ("local", "slurm")


@dataclass
class WorkerSettings:
    workers: int                          # cells in flight at once
    cluster: str = "local"                # local: processes here | slurm
    params: dict = field(default_factory=dict)   # submitit's update_parameters, e.g. slurm_partition, gpus_per_node
    poll_s: float = 2.0

    def validate(self) -> None:
        if self.workers < 1:
            raise RealignError(f"--workers must be at least 1, not {self.workers}")
        if self.cluster not in CLUSTERS:
            raise RealignError(f"--cluster must be one of {', '.join(CLUSTERS)}, not {self.cluster!r}")

    def threads(self) -> int | None:
        """Torch threads per local worker: this machine's cores shared out (a SLURM job gets its own)."""
        return max(1, (os.cpu_count() or 1) // self.workers) if self.cluster == "local" else None


def parse_params(pairs: list[str]) -> dict:
    """--cluster-set KEY=VALUE (submitit parameters); values that read as numbers become numbers."""
    params = {}
    for kv in pairs:
        key, sep, value = kv.partition("=")
        if not sep or not key:
            raise RealignError(f"--cluster-set takes KEY=VALUE (e.g. slurm_partition=gpu), not {kv!r}")
        for kind in (int, float):
            try:
                params[key] = kind(value)
                break
            except ValueError:
                continue
        else:
            params[key] = value
    return params


def run_cell(run: CellRun, threads: int | None) -> None:
    """A worker's job: one cell's `fix`, on its share of the cores."""
    from ..progress import quiet_libraries

    if threads:
        import torch

        torch.set_num_threads(threads)
    quiet_libraries()
    run()


def executor(out: Path, settings: WorkerSettings):
    try:
        import submitit
    except ImportError as e:
        raise RealignError("--workers needs submitit: pip install 'realign[cluster]'") from e
    existed = out.exists()
    try:
        ex = submitit.AutoExecutor(folder=out / "workers" / "%j", cluster=settings.cluster)
    except RuntimeError as e:            # e.g. --cluster slurm where there is no srun
        raise RealignError(f"--cluster {settings.cluster}: {e}") from e
    # a local job is killed after timeout_min (submitit's default: 2 minutes); a cell takes hours on a CPU
    try:
        ex.update_parameters(**{"timeout_min": 7 * 24 * 60, "name": "realign-bench", **settings.params})
    except (NameError, AssertionError, ValueError, TypeError) as e:
        if not existed:                  # submitit made the folder; bad input leaves nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise RealignError(f"--cluster-set: {' '.join(str(e).split())}") from e
    return ex


def submit(ex, run: CellRun, threads: int | None):
    try:
        return ex.submit(run_cell, run, threads)
    except Exception as e:  # noqa: BLE001 — e.g. no sbatch on this machine: said in one line
        raise RealignError(f"could not submit the cell {run.out} to the cluster: {' '.join(str(e).split())}") from e


def run_bench_on_workers(cells: list[Cell], global_sets: list[str], opts: FixOptions, out: Path,
                         settings: WorkerSettings, on_cell_done: Callable[[], None] | None = None) -> dict[str, int]:
    """Every unfinished cell, at most `settings.workers` at a time; returns counts of cells skipped
    (finished before), run and failed. Raises after the last cell when any failed, naming their logs."""
    settings.validate()
    ex = executor(out, settings)                 # wrong submitit parameters fail before anything is written
    todo, counts = unfinished(cells, global_sets, out)
    counts["failed"] = 0
    warm = {(c.finetune.name, c.seed) for c in cells if c.done}    # base and finetune evaluated (cached)
    running: dict = {}                                              # job -> cell
    failures: list[str] = []
    try:
        while todo or running:
            while len(running) < settings.workers and (cell := _next(todo, running.values(), warm)):
                todo.remove(cell)
                job = submit(ex, resolve(cell, global_sets, opts), settings.threads())
                running[job] = cell
                console.print(f"cell {cell.label}: job {job.job_id} "
                              f"(log {job.paths.stderr})", highlight=False)
            time.sleep(settings.poll_s)
            for job in [j for j in running if j.done()]:
                cell = running.pop(job)
                try:
                    job.result()
                except Exception as e:  # noqa: BLE001 — a failed cell is reported, the others go on
                    counts["failed"] += 1
                    failures.append(f"{cell.label}: "
                                    f"{str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__} "
                                    f"(log {job.paths.stderr})")
                    continue
                counts["run"] += 1
                warm.add((cell.finetune.name, cell.seed))
                console.print(f"cell {cell.label}: done "
                              f"({counts['run'] + counts['failed']} of {counts['run'] + counts['failed'] + len(todo) + len(running)})",
                              highlight=False)
                if on_cell_done:
                    on_cell_done()
    except (KeyboardInterrupt, RealignError):
        for job in running:
            job.cancel()
        raise
    if failures:
        raise RealignError(f"{len(failures)} bench cell(s) failed: " + "; ".join(failures))
    return counts


def _next(todo: list[Cell], running, warm: set) -> Cell | None:
    """The first cell that would not evaluate a base and finetune another cell in flight is evaluating."""
    busy = {(c.finetune.name, c.seed) for c in running}
    for cell in todo:
        key = (cell.finetune.name, cell.seed)
        if key in warm or key not in busy:
            return cell
    return None
