"""`realign bench` in one call: the request checked (before any organism is built or cell written),
its cells planned (runs.bench) and run here or on workers (runs.workers), the leaderboard rewritten
after every cell."""

from __future__ import annotations

from pathlib import Path

from ..errors import RealignError
from ..options import BenchOptions, FixOptions, comma_list
from ..recipe import available_recipes
from .bench import organism_finetunes, plan, run_bench, user_finetunes
from .leaderboard import write_leaderboard
from .workers import WorkerSettings, parse_params, run_bench_on_workers


def bench(req: BenchOptions, global_sets: list[str], opts: FixOptions, out: Path) -> dict[str, int]:
    """`realign bench`: check the request (before any organism is built or cell written), plan the
    cells, run the unfinished ones here or on workers, the leaderboard rewritten after each; returns
    the counts of cells run and skipped."""
    if bool(req.finetune) == req.organism:
        raise RealignError("give --finetune (one or more) or --organism, not both or neither")
    if req.seeds < 1:
        raise RealignError("--seeds must be at least 1")
    names = comma_list(req.recipes)
    names = list(available_recipes()) if names == ["all"] else names
    if not names:
        raise RealignError("--recipes is empty; give e.g. --recipes merge,freeze+dpo")
    settings = None
    if req.workers:
        settings = WorkerSettings(req.workers, req.cluster, parse_params(req.cluster_set or []))
        settings.validate()
    if req.organism:
        fts = organism_finetunes(comma_list(req.organism_finetunes), req.organism_dir, req.organism_size)
    else:
        fts = user_finetunes(req.finetune, req.base)
    cells = plan(fts, names, list(range(req.seeds)), out)
    if settings:
        return run_bench_on_workers(cells, global_sets, opts, out, settings, on_cell_done=lambda: write_leaderboard(out))
    return run_bench(cells, global_sets, opts, out, on_cell_done=lambda: write_leaderboard(out))
