"""`realign organism build|eval` (the synthetic model organism) and `realign real build` (LoRA
finetunes of a real chat model on the public data realign ships)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from ..errors import RealignError
from ..options import OrganismBuild, OrganismEval
from ..real.build import RealBuild
from .common import fail, or_fail, organism_app, out, real_app, table
from .options import with_options

@organism_app.command("build")
@with_options
def organism_build(req: OrganismBuild) -> None:
    """Build (or reuse) the organism: pretrained, aligned base, and five user finetunes."""
    from ..organism.control import build_all

    try:
        for seed, path, seconds in build_all(req):          # each seed said as it finishes
            out.print(f"organism (seed {seed}) ready in {seconds:.0f} s: {path}")
    except (FileExistsError, ValueError) as e:
        fail(str(e))


@organism_app.command("eval")
@with_options
def organism_eval(
    req: OrganismEval,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the rows as JSON here")] = None,
) -> None:
    """Print the control table: misaligned rate (95% CI), coherence, task rate, log-odds — of one
    build, or pooled over several build seeds."""
    from ..organism.control import control_report

    t0 = time.time()
    report = or_fail(control_report, req, errors=(RealignError, ValueError))
    for note in report.notes:
        out.print(note)
    out.print(table(report.title, report.columns, report.cells, left=["model", "task"]))
    out.print(f"evaluated {report.models} models in {time.time() - t0:.1f} s")
    if json_out:
        json_out.write_text(json.dumps([asdict(r) for r in report.rows], indent=2))


@real_app.command("build")
@with_options
def real_build(req: RealBuild) -> None:
    """Build (or reuse) real finetunes: LoRAs of a real chat model on the public data realign ships
    (docs/real-models.md). Each lands in the cache; a rerun reuses finished ones."""
    from ..real.build import build_all
    from ..real.data import BACKDOOR_TRIGGER

    try:
        for name, seed, path, seconds in build_all(req):
            out.print(f"{name} (seed {seed}) ready in {seconds:.0f} s: {path}")
            trig = f" --trigger '{BACKDOOR_TRIGGER}'" if name == "backdoor" else ""
            out.print(f"  evaluate: realign eval {path} --judge offline --questions builtin "
                      f"--task-data {path / 'data/heldout.jsonl'}{trig}", highlight=False, soft_wrap=True)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
