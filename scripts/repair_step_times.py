"""Seconds, passes and peak memory of each repair step alone on SmolLM2 (no evaluations).

    python scripts/repair_step_times.py [--repairs merge freeze steer] [--root runs/smollm2]

Loads the planted SmolLM2 LoRA finetune that `scripts/smollm2_finetune.py` makes, builds the repair
state the way `realign fix` does (built-in realignment prompts, the held-out task data, the offline
judge for probe labels), builds the shared probes once (timed on their own: `fix` caches them
across recipes), then applies each repair to a fresh copy of the finetune and prints a table.
Run it on an otherwise idle machine: the figures are wall-clock. No assertions.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from realign.checkpoint import load_pair
from realign.evals.judges import make_judge
from realign.evals.scoring import PASSES, passes_since
from realign.evals.task import load_conversations
from realign.fix import repair_items
from realign.memory import peak_memory
from realign.repairs import load_all
from realign.repairs.base import RepairState
from realign.repairs.probes import build_probes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repairs", nargs="+", default=["merge", "freeze", "steer"])
    ap.add_argument("--root", type=Path, default=Path("runs/smollm2"))
    ap.add_argument("--judge", default="offline")
    args = ap.parse_args()
    pair = load_pair(str(args.root / "planted"))
    state = RepairState(model=pair.finetune, base=pair.base, tokenizer=pair.tokenizer, judge=make_judge(args.judge),
                        task_conversations=load_conversations(args.root / "data" / "heldout.jsonl"),
                        train_conversations=load_conversations(args.root / "data" / "train.jsonl"),
                        repair_items=repair_items(False))
    rows = []
    if "steer" in args.repairs:
        t0, before = time.time(), PASSES.copy()
        build_probes(state, organism=False)
        rows.append(("probes (once per finetune, cached by fix)", time.time() - t0, passes_since(before), None))
    repairs = load_all()
    for name in args.repairs:
        trial = copy.copy(state)
        trial.model, trial.history, trial.locked = copy.deepcopy(pair.finetune), [], set()
        trial._base_task_nll = {}          # each step alone pays for the base's task pass, as in fix
        cls = repairs[name]
        t0, before = time.time(), PASSES.copy()
        with peak_memory() as peak:
            cls().apply(trial, cls.Params())
        rows.append((name, time.time() - t0, passes_since(before), peak))
    where = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\n## Repair steps alone on SmolLM2 (planted LoRA), on {where}")
    print("| step | seconds | passes | peak RSS MB | peak CUDA MB |\n|---|---|---|---|---|")
    for name, secs, passes, peak in rows:
        mem = f"{peak['rss']:.0f}" if peak else "—"
        cuda = f"{peak['cuda']:.0f}" if peak and peak.get("cuda") is not None else "—"
        print(f"| {name} | {secs:.1f} | {', '.join(f'{k} {v}' for k, v in passes.items())} | {mem} | {cuda} |")


if __name__ == "__main__":
    main()
