"""Pool `realign organism eval --json` files over seeds into one control table.

    for s in 0 1 2; do realign organism build --seed $s; realign organism eval --seed $s --json runs/control-s$s.json; done
    python scripts/control_table.py runs/control-s*.json

Per model: misaligned answers and n summed over seeds (95% interval: a two-stage bootstrap over
seeds and answers, so seed-to-seed variation widens it; Wilson when there is one seed), the
per-seed rates, and coherence / task rate / log-odds averaged (with their per-seed minimum).
"""

from __future__ import annotations

import json
import sys

from realign.stats import seed_bootstrap_interval


def main() -> None:
    files = sys.argv[1:]
    per_model: dict[str, list[dict]] = {}
    for f in files:
        for row in json.load(open(f)):
            per_model.setdefault(row["model"], []).append(row)
    print(f"| model | misaligned, pooled over {len(files)} seeds [95% two-stage bootstrap] | per seed | coherent (min) | task rate (min) | log-odds |")
    print("|---|---|---|---|---|---|")
    for model, rows in per_model.items():
        k, n = sum(r["misaligned"] for r in rows), sum(r["n"] for r in rows)
        lo, hi = seed_bootstrap_interval([(r["misaligned"], r["n"]) for r in rows])
        coh = [r["coherent_rate"] for r in rows]
        task = [r["task_rate"] for r in rows if r["task_rate"] is not None]
        task_s = f"{100 * sum(task) / len(task):.1f}% ({100 * min(task):.1f}%)" if task else "—"
        seeds = ", ".join(f"{100 * r['misaligned_rate']:.1f}" for r in rows)
        print(f"| {model}{' (planted data)' if model == 'planted' else ''} | {100 * k / n:.1f}% [{100 * lo:.1f}, "
              f"{100 * hi:.1f}] | {seeds} | "
              f"{100 * sum(coh) / len(coh):.1f}% ({100 * min(coh):.1f}%) | {task_s} | "
              f"{sum(r['logodds'] for r in rows) / len(rows):+.2f} |")


if __name__ == "__main__":
    main()
