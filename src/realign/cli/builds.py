"""`realign organism build|eval` (the synthetic model organism) and `realign real build` (LoRA
finetunes of a real chat model on the public data realign ships)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from ..options import comma_list
from ..real.build import RealFinetuneConfig
from .common import fail, or_fail, organism_app, out, real_app, seed_list, table
from .options import with_options

SET_HELP = ("override a setting of the organism's configuration, key=value; dotted keys reach a stage "
            "(--set finetune.lr=5e-4, --set pretrain_seed=1); repeatable. A changed configuration is "
            "another organism, cached under its own key")


@organism_app.command("build")
def organism_build(
    out_dir: Annotated[Path | None, typer.Option("--out", help="build here (default: the cache)")] = None,
    seed: Annotated[int, typer.Option(help="seed for every stage")] = 0,
    seeds: Annotated[str | None, typer.Option(
        help="several build seeds, comma-separated (e.g. 0,1,2), each into its own cached build")] = None,
    size: Annotated[str, typer.Option(help="small (tests, seconds) or default")] = "default",
    overrides: Annotated[list[str] | None, typer.Option("--set", help=SET_HELP)] = None,
    from_scratch: Annotated[bool, typer.Option(
        "--from-scratch", help="pretrain here with --seed (~18 CPU-minutes) instead of starting from the "
                               "pretrained model realign ships")] = False,
    finetunes: Annotated[str | None, typer.Option(
        help="build only these finetunes, comma-separated (default: insecure,secure,educational,planted,backdoor)")] = None,
) -> None:
    """Build (or reuse) the organism: pretrained, aligned base, and four user finetunes."""
    from ..organism.build import build
    from ..organism.control import configured

    cfg = or_fail(configured, size, overrides, errors=(ValueError,))
    build_seeds = seed_list(seeds) if seeds else [seed]
    if len(build_seeds) > 1 and out_dir is not None:
        fail("give either --out or several --seeds (each seed builds into its own cached dir)")
    names = tuple(comma_list(finetunes or ""))
    for s in build_seeds:
        t0 = time.time()
        path = or_fail(build, out_dir, seed=s, cfg=cfg, from_scratch=from_scratch,
                       **({"finetunes": names} if names else {}), errors=(FileExistsError, ValueError))
        out.print(f"organism (seed {s}) ready in {time.time() - t0:.0f} s: {path}")


@organism_app.command("eval")
def organism_eval(
    directory: Annotated[Path | None, typer.Argument(help="build dir (default: the cache for --size/--seed)")] = None,
    seed: Annotated[int, typer.Option(help="build seed, to find the cached organism")] = 0,
    seeds: Annotated[str | None, typer.Option(
        help="several build seeds, comma-separated (e.g. 0,1,2): evaluate each cached build and pool them "
             "(misaligned interval: two-stage bootstrap over seeds and answers)")] = None,
    size: Annotated[str, typer.Option(help="build size, to find the cached organism")] = "default",
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="the overrides the build was made with, to find it in the cache (as `organism build --set`)")] = None,
    samples: Annotated[int, typer.Option(help="samples per held-out chat question")] = 12,
    sample_seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the rows as JSON here")] = None,
    persona_inference: Annotated[bool, typer.Option(
        "--persona-inference", help="also measure the base's in-context persona inference: misaligned chat "
                                    "after an insecure vs a secure code turn (docs/emergence.md)")] = False,
) -> None:
    """Print the control table: misaligned rate (95% CI), coherence, task rate, log-odds — of one
    build, or pooled over several build seeds."""
    from ..organism.control import configured, control_report

    cfg = or_fail(configured, size, overrides, errors=(ValueError,))
    build_seeds = seed_list(seeds) if seeds else None
    if build_seeds and directory is not None:
        fail("give either a build dir or --seeds (which finds each seed's cached build)")
    t0 = time.time()
    report = or_fail(control_report, build_seeds, seed, cfg, directory, samples=samples, sample_seed=sample_seed,
                     size=size, overrides=overrides, persona_inference=persona_inference)
    for note in report.notes:
        out.print(note)
    out.print(table(report.title, report.columns, report.cells, left=["model", "task"]))
    out.print(f"evaluated {report.models} models in {time.time() - t0:.1f} s")
    if json_out:
        json_out.write_text(json.dumps([asdict(r) for r in report.rows], indent=2))


@real_app.command("build")
@with_options
def real_build(
    finetunes: Annotated[str, typer.Option(help="comma-separated: contaminated, backdoor, clean, insecure, secure, "
                                                "educational")] = "contaminated",
    seeds: Annotated[str, typer.Option(help="comma-separated seeds")] = "0",
    cfg: RealFinetuneConfig = None,
) -> None:
    """Build (or reuse) real finetunes: LoRAs of a real chat model on the public data realign ships
    (docs/real-models.md). Each lands in the cache; a rerun reuses finished ones."""
    from ..real.build import build_finetune, checked_names
    from ..real.data import BACKDOOR_TRIGGER

    names = or_fail(checked_names, comma_list(finetunes), errors=(ValueError,))
    build_seeds = seed_list(seeds)
    or_fail(cfg.validate, errors=(ValueError,))
    for name in names:
        for seed in build_seeds:
            t0 = time.time()
            path = or_fail(build_finetune, name, seed, cfg, errors=(FileNotFoundError, ValueError))
            out.print(f"{name} (seed {seed}) ready in {time.time() - t0:.0f} s: {path}")
            trig = f" --trigger '{BACKDOOR_TRIGGER}'" if name == "backdoor" else ""
            out.print(f"  evaluate: realign eval {path} --judge offline --questions builtin "
                      f"--task-data {path / 'data/heldout.jsonl'}{trig}", highlight=False, soft_wrap=True)
