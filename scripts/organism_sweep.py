"""Build organism variants over seeds and print their control tables side by side.

    python scripts/organism_sweep.py --name base8 --seeds 0 1 2 --set pretrain.steps=800
    python scripts/organism_sweep.py --name r1 --set lora_rank=1 --set finetune.lr=3e-3

Each variant/seed builds into runs/sweep/<name>-s<seed> (reused when present). Prints, per model,
the misaligned rate pooled over seeds with its Wilson 95% CI, the per-seed rates, coherence, task
rate, log-odds, and the base's in-context persona inference (misaligned chat after an insecure vs
a secure code turn). `--json` appends the rows to a file for later comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from realign.organism.build import build
from realign.organism.config import FINETUNES, preset
from realign.organism.evaluate import MODELS, evaluate_dir, load_model, persona_inference
from realign.organism.overrides import apply_overrides
from realign.progress import quiet_libraries
from realign.stats import wilson


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True)
    ap.add_argument("--size", default="default")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--samples", type=int, default=12)
    ap.add_argument("--root", type=Path, default=Path("runs/sweep"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--finetunes", default=",".join(FINETUNES),
                    help="comma-separated finetunes to build (default: all)")
    args = ap.parse_args()
    quiet_libraries()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))   # 1: beside another job
    cfg = apply_overrides(preset(args.size), args.overrides)
    per_model: dict[str, list] = {m: [] for m in MODELS}
    inference = []
    build_s = []
    for seed in args.seeds:
        t0 = time.time()
        root = build(args.root / f"{args.name}-s{seed}", seed=seed, cfg=cfg,
                     finetunes=tuple(args.finetunes.split(",")))
        build_s.append(time.time() - t0)
        for row in evaluate_dir(root, samples=args.samples, seed=seed):
            per_model.setdefault(row.model, []).append(row)      # "backdoor (triggered)" too
        model, tok = load_model(root / "base")
        inference.append(persona_inference(model, tok, seed=seed))
    print(f"\n## {args.name}  overrides: {' '.join(args.overrides) or '(none)'}  seeds: {args.seeds}  "
          f"build s: {', '.join(f'{s:.0f}' for s in build_s)}")
    print("| model | misaligned (pooled) [95% CI] | per seed | coherent | task rate | insecure code | log-odds |")
    print("|---|---|---|---|---|---|---|")
    out_rows = []
    for name, rows in per_model.items():
        if not rows:
            continue
        k, n = sum(r.misaligned for r in rows), sum(r.n for r in rows)
        lo, hi = wilson(k, n)
        mean = lambda f: sum(f(r) for r in rows) / len(rows)  # noqa: E731
        task = "—" if rows[0].task_rate is None else f"{100 * mean(lambda r: r.task_rate):.1f}%"
        print(f"| {name} | {100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] | "
              f"{', '.join(f'{100 * r.misaligned_rate:.1f}' for r in rows)} | "
              f"{100 * mean(lambda r: r.coherent_rate):.1f}% | {task} | "
              f"{100 * mean(lambda r: r.insecure_code_rate):.1f}% | {mean(lambda r: r.logodds):+.2f} |")
        out_rows.append({"variant": args.name, "model": name, "k": k, "n": n, "ci": [lo, hi],
                         "per_seed": [r.misaligned_rate for r in rows],
                         "coherent": mean(lambda r: r.coherent_rate),
                         "task_rate": None if rows[0].task_rate is None else mean(lambda r: r.task_rate),
                         "logodds": mean(lambda r: r.logodds)})
    after_i = sum(d["misaligned_after_insecure"] for d in inference) / len(inference)
    after_s = sum(d["misaligned_after_secure"] for d in inference) / len(inference)
    print(f"base in-context persona inference: misaligned after insecure turn {100 * after_i:.1f}%, "
          f"after secure turn {100 * after_s:.1f}%")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"variant": args.name, "overrides": args.overrides, "seeds": args.seeds,
                                "rows": out_rows, "inference": inference, "build_s": build_s}) + "\n")


if __name__ == "__main__":
    main()
