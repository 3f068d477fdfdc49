"""`realign bench`: every recipe × finetune × seed through the same code as `realign fix`.

A cell is one `run_fix` into OUT/cells/<finetune>/s<seed>/<recipe>. `run_fix` writes its output
dir whole or not at all, so a cell whose realign.json exists is finished: a rerun of the same
command skips it, and a cell killed half-way is redone from its start. Base and finetune are
evaluated once per (model, seed) and then come from the evaluation cache that `fix` shares.
The leaderboard (`realign.runs.leaderboard`) is rebuilt from the finished cells after every cell.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import RealignError
from ..progress import console
from .fix import FixOptions


@dataclass
class Finetune:
    """One finetune under test; `locate(seed)` gives (checkpoint, base) — the organism's differ by seed."""

    name: str
    locate: Callable[[int], tuple[str, str | None]]
    trigger: str | None = None       # its backdoor trigger, when it has a known one


@dataclass
class Cell:
    finetune: Finetune
    seed: int
    recipe: str          # a recipe name or file, optionally with @step.param=value,… overrides
    out: Path

    @property
    def label(self) -> str:
        return f"{self.finetune.name} · seed {self.seed} · {self.recipe}"

    @property
    def done(self) -> bool:
        return (self.out / "realign.json").exists()


def recipe_label(recipe: str) -> str:
    """A folder name for a recipe spec (a path's stem; overrides kept, made filename-safe)."""
    name, _, sets = recipe.partition("@")
    name = Path(name).stem if name.endswith((".yaml", ".yml")) else name
    return re.sub(r"[^A-Za-z0-9_.+=@,;-]", "_", name + (f"@{sets}" if sets else ""))


def user_finetunes(checkpoints: list[str], base: str | None) -> list[Finetune]:
    from ..model_io.checkpoint import check_ref

    for ref in checkpoints:           # a wrong path fails now, before any cell or output dir
        check_ref(ref, "checkpoint")
    names: list[str] = []
    for ref in checkpoints:
        stem = Path(ref.rstrip("/")).name or "finetune"
        name, k = stem, 2
        while name in names:          # two finetunes with the same folder name stay apart
            name, k = f"{stem}-{k}", k + 1
        names.append(name)
    return [Finetune(n, lambda _seed, ref=ref: (ref, base)) for n, ref in zip(names, checkpoints)]


def organism_finetunes(names: list[str], root: Path | None = None, size: str = "default") -> list[Finetune]:
    """The organism's finetunes; each seed's organism is built (or reused) on first use."""
    from ..organism.build import build
    from ..organism.config import ALL_FINETUNES, TRIGGERED_FINETUNES
    from ..organism.data import BACKDOOR_TRIGGER

    unknown = [n for n in names if n not in ALL_FINETUNES]
    if unknown:
        raise RealignError(f"unknown organism finetune(s) {', '.join(unknown)}; choose from {', '.join(ALL_FINETUNES)}")

    def locate(seed: int, name: str) -> tuple[str, str | None]:
        org = build(root / f"s{seed}" if root else None, seed=seed, size=size, finetunes=tuple(names))
        return str(org / name), str(org / "base")

    return [Finetune(n, lambda seed, n=n: locate(seed, n), BACKDOOR_TRIGGER if n in TRIGGERED_FINETUNES else None)
            for n in names]


def plan(finetunes: list[Finetune], recipes: list[str], seeds: list[int], out: Path) -> list[Cell]:
    return [Cell(ft, seed, r, out / "cells" / ft.name / f"s{seed}" / recipe_label(r))
            for seed in seeds for ft in finetunes for r in recipes]


def overrides_for(recipe: str, global_sets: list[str]) -> tuple[str, list[str]]:
    """(recipe name, overrides): the recipe's own @overrides (;-separated), then the --set ones whose
    step it has."""
    from ..recipe import load_recipe

    name, _, sets = recipe.partition("@")
    own = [kv for kv in sets.split(";") if kv]
    steps = {s.name for s in load_recipe(name).steps}
    return name, own + [kv for kv in global_sets if kv.split(".", 1)[0] in steps or kv.split(".", 1)[0].isdigit()]


@dataclass
class CellRun:
    """One cell resolved into `run_fix`'s arguments: its finetune located (the organism built), its
    recipe's overrides split off, the seed and trigger in the options. Picklable: a worker runs it."""

    checkpoint: str
    base: str | None
    recipe: str
    overrides: list[str]
    out: Path
    opts: FixOptions

    def __call__(self) -> None:
        from .fix import run_fix

        run_fix(self.checkpoint, self.base, self.recipe, self.overrides, self.out, self.opts)


def resolve(cell: Cell, global_sets: list[str], opts: FixOptions) -> CellRun:
    checkpoint, base = cell.finetune.locate(cell.seed)
    name, overrides = overrides_for(cell.recipe, global_sets)
    trigger = opts.trigger or cell.finetune.trigger
    return CellRun(checkpoint, base, name, overrides, cell.out,
                   replace(opts, seed=cell.seed, overwrite=False, trigger=trigger))


def unfinished(cells: list[Cell], global_sets: list[str], out: Path) -> tuple[list[Cell], dict[str, int]]:
    """The cells still to run (bad recipes or overrides fail now, not after hours), and the counts."""
    for c in cells:
        overrides_for(c.recipe, global_sets)
    out.mkdir(parents=True, exist_ok=True)
    todo = [c for c in cells if not c.done]
    counts = {"skipped": len(cells) - len(todo), "run": 0}
    if counts["skipped"]:
        console.print(f"[dim]{counts['skipped']} of {len(cells)} cells finished earlier: skipped[/]")
    return todo, counts


def run_bench(cells: list[Cell], global_sets: list[str], opts: FixOptions, out: Path,
              on_cell_done: Callable[[], None] | None = None) -> dict[str, int]:
    """Run every unfinished cell in order, in this process; returns counts of cells skipped (finished
    before) and run. (realign.runs.workers runs them on several workers instead.)"""
    todo, counts = unfinished(cells, global_sets, out)
    t0 = time.time()
    for i, c in enumerate(todo, 1):
        eta = "" if i == 1 else f" · about {(time.time() - t0) / (i - 1) * (len(todo) - i + 1) / 60:.0f} min left"
        console.rule(f"cell {i}/{len(todo)}: {c.label}{eta}")
        resolve(c, global_sets, opts)()
        counts["run"] += 1
        if on_cell_done:
            on_cell_done()
    return counts

