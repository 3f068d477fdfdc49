"""Time `realign fix <organism finetune> --recipe freeze+dpo`, evaluation included.

    python scripts/bench_fix.py [--seed 0] [--finetune planted] [--recipe freeze+dpo]

Builds the organism if needed (not timed), then runs the fix command as a user would (a fresh
process) and prints its wall time and the per-phase seconds from realign.json. No assertions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from realign.organism.build import build


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--finetune", default="planted")
    ap.add_argument("--recipe", default="freeze+dpo")
    args = ap.parse_args()
    root = build(seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "repaired"
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "realign.cli", "fix", str(root / args.finetune), "--recipe", args.recipe,
                        "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
        wall = time.time() - t0
        meta = json.loads((out / "realign.json").read_text())
    print(f"| phase | seconds |   (realign fix {args.finetune} --recipe {args.recipe}, organism seed {args.seed})")
    print("|---|---|")
    for k, v in meta["timings"].items():
        print(f"| {k} | {v:.1f} |")
    print(f"| wall (process, incl. imports) | {wall:.1f} |")
    m = meta["metrics"]
    print("\n| model | misaligned | coherent | task exact match |\n|---|---|---|---|")
    for name in ("base", "finetune", "repaired"):
        r = m[name]
        print(f"| {name} | {100 * r['misaligned_rate']:.1f}% | {100 * r['coherent_rate']:.1f}% | "
              f"{100 * r['task']['task_exact_match']:.1f}% |")


if __name__ == "__main__":
    main()
