"""`realign eval`'s work, all but the printing: load the finetune (and its base), build the judge
and find its measured error, evaluate each model (every question behind a backdoor trigger when
one is given), and say whether anything needs repairing. The outcome is a typed object; eval.json
and eval.md are written from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import RealignError
from ..evals.judge_error import JudgeError
from ..evals.result import Evaluation
from ..evals.verdict import Verdict
from ..options import EvalRequest  # declared in realign.options, with the user's other options
from ..stats import pct
from .scan import ScanComparison

BACKENDS = ("hf", "vllm")

# one model's entry in eval.json's "results" (and in --json), besides its per-question table
SUMMARY_KEYS = ("n", "misaligned", "misaligned_rate", "ci_low", "ci_high", "corrected", "mean_coherent",
                "coherent_rate", "coherent_n", "refusals", "code", "unscored", "errors", "logodds", "task",
                "judge", "judge_agreement", "seconds", "per_format")


@dataclass
class EvalOutcome:
    """One `realign eval`: each model's evaluation, the judge and what it is worth, the verdict."""

    checkpoint: str
    base_ref: str | None
    questions: str                         # --questions as given
    question_set: str                      # the set's name (with "+trigger" behind a trigger)
    judge: str                             # the judge's full name, e.g. "openai:gpt-4o"
    judge_agreement: dict                  # calibration.describe_judge
    judge_error: JudgeError | None         # its measured error (None: unknown)
    results: dict[str, Evaluation]         # "finetune" (and "base"), answers included
    verdict: Verdict | None                # None without the base
    scan: ScanComparison | None = None     # --scan

    def summaries(self) -> dict[str, dict]:
        return {name: summary_json(r) for name, r in self.results.items()}

    def to_json(self) -> dict:
        """eval.json's content."""
        out = {"checkpoint": self.checkpoint, "base": self.base_ref, "questions": self.questions,
               "judge_agreement": self.judge_agreement,
               "judge_error": self.judge_error.to_dict() if self.judge_error else None,
               "results": self.summaries(), "repair_needed": self.verdict.to_json() if self.verdict else None}
        if self.scan:                      # only when asked: eval.json without --scan is as it was
            out["scan"] = self.scan.to_json()
        return {**out, "answers": {n: r.rows for n, r in self.results.items()}}

    def markdown(self) -> str:
        """eval.md's content: the metrics table, lm-eval's numbers, the verdict, per question."""
        from .report import metrics_table, standard_eval_table

        lines = [f"# realign eval: `{self.checkpoint}`", "", *metrics_table(self.results)]
        lines += standard_eval_table(self.results)
        if self.verdict:
            lines += ["", f"Anything to repair? **{'yes' if self.verdict.repair_needed else 'no'}** — "
                          f"the finetune is {self.verdict.why}."]
        if self.scan:
            lines += ["", f"Latent scan (no trigger): {self.scan.finding()}."]
        lines += ["", "Per question (finetune):", "", "| question | n | misaligned |", "|---|---|---|"]
        for q, r in self.results["finetune"].per_question.items():
            lines.append(f"| {q} | {r.n} | {pct(r.misaligned_rate)} |")
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path) -> tuple[Path, Path]:
        """eval.json and eval.md in `out_dir` (made if missing); returns their paths."""
        out_dir.mkdir(parents=True, exist_ok=True)
        js, md = out_dir / "eval.json", out_dir / "eval.md"
        js.write_text(json.dumps(self.to_json(), indent=2))
        md.write_text(self.markdown())
        return js, md

    def write_summary(self, path: Path) -> None:
        """--json: the finetune's summary alone, or every model's when the base was evaluated too."""
        summary = self.summaries()
        path.write_text(json.dumps(summary["finetune"] if len(summary) == 1 else summary, indent=2))


def summary_json(r: Evaluation) -> dict:
    """One model's evaluation as eval.json holds it: the summary keys and its per-question table."""
    full = r.to_json(answers=False)
    out = {k: full.get(k) for k in SUMMARY_KEYS}
    out["per_question"] = full["per_question"]
    return out


def evaluate_checkpoint(req: EvalRequest) -> EvalOutcome:
    """Evaluate the finetune, then its base (unless skipped or unknown); bad input is a RealignError."""
    from ..evals.verdict import repair_verdict
    from .session import SessionOptions, open_session

    if req.backend not in BACKENDS:
        raise RealignError(f"--backend must be hf or vllm, not {req.backend!r}")
    session = open_session(req.checkpoint, req.base, SessionOptions(
        questions=req.questions, judge=req.judge, judge_model=req.judge_model, judge_url=req.judge_url,
        judge_errors=req.judge_errors, task_data=req.task_data, task_metric=req.task_metric,
        settings=req.settings, trigger=req.trigger, trigger_only=True, backend=req.backend,
        load=req.load), load_base=not req.skip_base)
    pair = session.pair
    results = {}
    models = [("finetune", pair.finetune)] + ([("base", pair.base)] if pair.base is not None else [])
    try:
        for name, model in models:
            results[name] = session.evaluate(name, model)
    finally:
        session.backend.close()
    verdict = repair_verdict(results["base"], results["finetune"]) if "base" in results else None
    scan = None
    if req.scan:   # the setting's repair-side items, never behind --trigger: the scan's point is not knowing it
        from .scan import scan_models

        scan = scan_models(dict(models), pair.tokenizer, session.setting.repair_items(), seed=req.settings.seed,
                           openly_misaligned=verdict.repair_needed if verdict else None)
    return EvalOutcome(checkpoint=req.checkpoint, base_ref=pair.base_ref, questions=req.questions,
                       question_set=session.arms[0].qset.name, judge=session.judge.name,
                       judge_agreement=session.judge_trust, judge_error=session.judge_error, results=results,
                       verdict=verdict, scan=scan)
