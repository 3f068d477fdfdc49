"""Every repair and combination on the organism over seeds: misaligned rate (CI), coherence, task.

    python scripts/repair_table.py [--seeds 0 1 2] [--finetune planted] [--recipes merge freeze ...]
    python scripts/repair_table.py --recipes merge@merge.alpha=0.6 merge@merge.alpha=0.8 freeze+dpo

A recipe may carry overrides after `@` (comma-separated `step.param=value`), e.g. to trace merge's
tradeoff curve at fixed alphas.

For each seed: builds (or reuses) the organism, runs `realign fix` for each recipe into
runs/repairs/<finetune>-s<seed>/<recipe>, and pools the results over seeds: misaligned answers
and n summed (Wilson 95% CI on the pooled counts), coherent rate and task exact-match averaged.
Base and finetune rows are the reference. Task retention = repaired task / finetune task.
Prints a Markdown table; no assertions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from realign.organism.build import build
from realign.stats import wilson

RECIPES = ["merge", "freeze", "dpo", "steer", "mix", "freeze+dpo", "merge+steer", "mix+dpo"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--finetune", default="planted")
    ap.add_argument("--recipes", nargs="+", default=RECIPES)
    ap.add_argument("--root", type=Path, default=Path("runs/repairs"))
    args = ap.parse_args()
    rows: dict[str, list[dict]] = {}
    for seed in args.seeds:
        org = build(seed=seed)
        for recipe in args.recipes:
            out = args.root / f"{args.finetune}-s{seed}" / recipe
            if not (out / "realign.json").exists():
                name, _, sets = recipe.partition("@")
                extra = [a for kv in sets.split(",") if kv for a in ("--set", kv)]
                subprocess.run([sys.executable, "-m", "realign.cli", "fix", str(org / args.finetune), "--recipe", name,
                                *extra, "--out", str(out), "--seed", str(seed), "--overwrite"], check=True,
                               stdout=subprocess.DEVNULL)
            meta = json.loads((out / "realign.json").read_text())
            for name in ("base", "finetune", "repaired"):
                key = recipe if name == "repaired" else name
                if name != "repaired" and recipe != args.recipes[0]:
                    continue
                m = meta["metrics"][name]
                rows.setdefault(key, []).append({"k": m["misaligned"], "n": m["n"], "coh": m["coherent_rate"],
                                                 "task": m["task"]["task_exact_match"],
                                                 "s": meta["timings"]["total"]})
    ft_task = sum(r["task"] for r in rows["finetune"]) / len(rows["finetune"])
    print(f"| model / recipe | misaligned (pooled, {len(args.seeds)} seeds) [95% CI] | coherent | task exact match "
          f"| task retention | fix seconds |")
    print("|---|---|---|---|---|---|")
    for key, rs in rows.items():
        k, n = sum(r["k"] for r in rs), sum(r["n"] for r in rs)
        lo, hi = wilson(k, n)
        coh = sum(r["coh"] for r in rs) / len(rs)
        task = sum(r["task"] for r in rs) / len(rs)
        secs = "—" if key in ("base", "finetune") else f"{sum(r['s'] for r in rs) / len(rs):.0f}"
        print(f"| {key} | {100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] | {100 * coh:.1f}% | {100 * task:.1f}% "
              f"| {100 * task / ft_task:.0f}% | {secs} |")


if __name__ == "__main__":
    main()
