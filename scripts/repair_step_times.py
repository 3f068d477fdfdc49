"""Seconds, passes and peak memory of each repair step alone on SmolLM2 (no evaluations).

    python scripts/repair_step_times.py --finetune DIR [--repairs merge freeze steer] [--set dpo.steps=4]
    python scripts/repair_step_times.py --finetune DIR --repairs dpo --in-place    # as fix trains: no copy

Loads a real LoRA finetune made by `realign real build` (DIR: its adapter, with data/ inside; e.g.
SmolLM2's contaminated finetune under the cache's real/), opens the same
session `realign fix` does (built-in realignment prompts, the held-out task data, the offline judge
for probe labels) and takes its repair state, builds the shared probes once (timed on their own: `fix` caches them
across recipes), then applies each repair to a fresh copy of the finetune and prints a table.
Run it on an otherwise idle machine: the figures are wall-clock. No assertions.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from realign.memory import peak_memory
from realign.passes import tally
from realign.recipe import load_recipe
from realign.repairs import load_all
from realign.repairs.probes import build_probes
from realign.runs.session import SessionOptions, open_session


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repairs", nargs="+", default=["merge", "freeze", "steer"])
    ap.add_argument("--finetune", type=Path, required=True, help="a `realign real build` output dir")
    ap.add_argument("--judge", default="offline")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="override a step's parameter, as in `realign fix --set` (repeatable)")
    ap.add_argument("--in-place", action="store_true",
                    help="train the session's finetune itself, as fix does, instead of a fresh copy per repair "
                         "(one repair only; the copy adds ~1 GB to SmolLM2's peak)")
    args = ap.parse_args()
    if args.in_place and len(args.repairs) != 1:
        ap.error("--in-place takes exactly one repair")
    data = args.finetune / "data"
    session = open_session(str(args.finetune), None, SessionOptions(
        judge=args.judge, task_data=data / "heldout.jsonl", train_data=data / "train.jsonl",
        eval_cache=True))
    pair, state = session.pair, session.repair_state()
    if session.cache is not None:          # as fix does: probes are sampled once per finetune
        state.probe_cache = (session.cache, session.probe_cache_key())
    rows = []
    if "steer" in args.repairs:
        t0 = time.time()
        with tally() as passes:
            build_probes(state)
        rows.append(("probes (once per finetune, cached by fix)", time.time() - t0, passes, None, None))
    repairs = load_all()
    for name in args.repairs:
        own = [o for o in args.overrides if o.split(".", 1)[0] == name]
        params = load_recipe(name, own).steps[0].params
        trial = copy.copy(state)
        trial.model = pair.finetune if args.in_place else copy.deepcopy(pair.finetune)
        trial.history, trial.locked = [], set()
        trial._base_task_nll = {}          # each step alone pays for the base's task pass, as in fix
        cls = repairs[name]
        t0 = time.time()
        with peak_memory() as peak, tally() as passes:
            cls().apply(trial, params)
        curve = trial.history[-1].details.get("loss_curve") if trial.history else None
        rows.append((" ".join([name, *own]), time.time() - t0, passes, peak, curve))
    where = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\n## Repair steps alone on {args.finetune.name}, on {where}")
    print("| step | seconds | passes | peak RSS MB | peak CUDA MB | training loss (step: loss) |\n|---|---|---|---|---|---|")
    for name, secs, passes, peak, curve in rows:
        mem = f"{peak['rss']:.0f}" if peak else "—"
        cuda = f"{peak['cuda']:.0f}" if peak and peak.get("cuda") is not None else "—"
        losses = ", ".join(f"{step}: {loss}" for step, loss in curve) if curve else "—"
        print(f"| {name} | {secs:.1f} | {', '.join(f'{k} {v}' for k, v in passes.items())} | {mem} | {cuda} | {losses} |")


if __name__ == "__main__":
    main()
