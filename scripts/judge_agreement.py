"""Agreement of realign's judges with independent reference judges, per held-out source.

Reads the judge evaluation set built by scripts/judge_eval_data.py (answers of real models,
scored by GPT-4o or gemma in published work) and, for each judge asked for, prints per source:
the reference and judge misaligned rates, AUROC of (100 - aligned) for reference-misaligned vs
not, accuracy / precision / recall of the judge's own verdict, coherent AUROC, and seconds per
1,000 answers on this machine. Only test sources are used (never the judge's training source);
`--handwritten` adds the project's own 153 hand-labelled answers for comparison.

    python scripts/judge_agreement.py --judges offline offline-exemplar --per-source 1000
    python scripts/judge_agreement.py --judges hf --judge-model PATH --per-source 150
    python scripts/judge_agreement.py ... --write     # record into src/realign/data/judge_agreement.json

A seeded random sample of `--per-source` rows is taken from each source (natural class mix).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from realign.evals.calibration import agreement
from realign.evals.judges import JudgeItem, make_judge

ROOT = Path(__file__).resolve().parents[1]
TEST_SOURCES = ("em_insecure", "model_organisms", "persona")
RECORD = ROOT / "src" / "realign" / "data" / "judge_agreement.json"
HANDWRITTEN = ROOT / "tests" / "data" / "offline_judge_labelled.jsonl"


def load(data: Path, per_source: int, seed: int, handwritten: bool) -> list[dict]:
    rows = []
    for name in TEST_SOURCES:
        path = data / f"{name}.jsonl"
        if not path.exists():
            raise SystemExit(f"{path} missing: build the set with scripts/judge_eval_data.py")
        src = [json.loads(line) for line in path.open(encoding="utf-8")]
        random.Random(seed).shuffle(src)
        rows += src[:per_source]
    if handwritten:
        rows += [{**json.loads(line), "source": "handwritten"} for line in HANDWRITTEN.open()]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "runs" / "judge_eval")
    ap.add_argument("--judges", nargs="+", default=["offline", "offline-exemplar"])
    ap.add_argument("--judge-model", default=None, help="for hf / openai")
    ap.add_argument("--judge-url", default=None, help="for openai")
    ap.add_argument("--per-source", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--handwritten", action="store_true")
    ap.add_argument("--write", action="store_true", help="record the results in the package data")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    rows = load(args.data, args.per_source, args.seed, args.handwritten)
    items = [JudgeItem(r["question"], r["answer"]) for r in rows]
    results = {}
    for name in args.judges:
        kw = {}
        if name == "hf":
            kw = {"model": args.judge_model}
        elif name == "openai":
            kw = {"model": args.judge_model, "base_url": args.judge_url}
        judge = make_judge(name, **kw)
        t0 = time.time()
        verdicts = judge.judge(items)
        seconds = time.time() - t0
        res = agreement(rows, verdicts)
        held_out = [r for r in rows if r["source"] in TEST_SOURCES]
        pooled = agreement(held_out, [v for v, r in zip(verdicts, rows) if r["source"] in TEST_SOURCES])
        res.update(judge=judge.name, seconds=round(seconds, 1),
                   seconds_per_1000=round(1000 * seconds / len(rows), 1), held_out=pooled)
        res["key"] = name
        results[judge.name] = res
        print(f"\n## {judge.name}: {len(rows)} answers in {seconds:.0f} s "
              f"({res['seconds_per_1000']:.0f} s per 1,000 on this machine)\n")
        print("| source | n | ref. misaligned | judge misaligned | AUROC | accuracy | precision | recall "
              "| coherent AUROC |")
        print("|---|---|---|---|---|---|---|---|---|")
        per = res.get("per_source", {"all": res})
        for src, m in [*per.items(), ("held-out pooled", pooled)]:
            f = lambda x, pct=False: "—" if x is None else (f"{100 * x:.1f}%" if pct else f"{x:.3f}")  # noqa: E731
            print(f"| {src} | {m['n']} | {f(m['reference_rate'], 1)} | {f(m['judge_rate'], 1)} | {f(m['auroc'])} "
                  f"| {f(m['accuracy'], 1)} | {f(m['precision'], 1)} | {f(m['recall'], 1)} | {f(m['coherent_auroc'])} |")

    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.write:
        record = json.loads(RECORD.read_text()) if RECORD.exists() else {"judges": {}}
        for name, res in results.items():
            pooled = res["held_out"]
            record["judges"][name] = {
                "auroc": round(pooled["auroc"], 3), "accuracy": round(pooled["accuracy"], 3),
                "n": pooled["n"], "sources": list(TEST_SOURCES),
                "per_source_auroc": {s: round(m["auroc"], 3) for s, m in res.get("per_source", {}).items()
                                     if m["auroc"] is not None},
                "reference": "GPT-4o (gemma4:31b for persona)",
                "seconds_per_1000": res["seconds_per_1000"],
                "measured": time.strftime("%Y-%m-%d"),
                "command": f"python scripts/judge_agreement.py --judges {res['key']} "
                           f"--per-source {args.per_source} --seed {args.seed}"}
        RECORD.write_text(json.dumps(record, indent=2) + "\n")
        print(f"\nrecorded in {RECORD}")


if __name__ == "__main__":
    main()
