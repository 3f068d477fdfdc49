"""What `realign fix` writes besides the model: report.md and tradeoff.png (and the metrics table
that the model card shares)."""

from __future__ import annotations

from pathlib import Path

from ..evals.result import CorrectedRate, Evaluation
from ..repairs.base import StepRecord
from ..stats import pct, wilson

EXPECTED_NOTE = ("Expected: the mean of the judge's own probability that each answer is misaligned; counting its "
                 "verdicts undercounts the answers it is unsure of (docs/judges.md).")


def _rate_ci(rate: float | None, n: int | None, low: float | None = None, high: float | None = None) -> str:
    """"12.5% [8.1, 18.0]": a rate with its Wilson 95% interval (given, or from the rate and n)."""
    if rate is None:
        return "—"
    if low is None and n:
        low, high = wilson(round(rate * n), n)
    return pct(rate) + ("" if low is None else f" [{100 * low:.1f}, {100 * high:.1f}]")


def task_value(r: Evaluation) -> tuple[str, float | None]:
    """The task metric shown in the tradeoff: exact-match rate if measured, else token accuracy."""
    task = r.task or {}
    for key, label in (("task_exact_match", "task exact match"), ("task_token_accuracy", "task token accuracy")):
        if task.get(key) is not None:
            return label, task[key]
    return "task", None


def with_triggered(results: dict[str, Evaluation]) -> list[tuple[str, Evaluation]]:
    """One (name, evaluation) per model, then one per model's evaluation behind a trigger."""
    rows = list(results.items())
    return rows + [(f"{name} (triggered)", r.triggered) for name, r in results.items() if r.triggered]


def metrics_rows(results: dict[str, Evaluation]) -> tuple[list[str], list[list[str]], list[str]]:
    """The metrics table as text cells: (header, one row per model and per triggered evaluation, notes).
    report.md, eval.md and the model card print it as markdown (metrics_table), the CLI as a rich table.

    Rates carry Wilson 95% intervals: the misaligned rate's is the evaluation's own (as is the expected
    rate's, for a judge that gives each answer a probability); coherence's is over the answers the
    judge scored for coherence; the task exact-match rate's over the task examples (token accuracy
    gets none: tokens of one answer are not independent trials). Log-odds is a mean over reference
    items whose spread is not kept, so it has no interval.
    """
    rows = with_triggered(results)
    label = next((task_value(r)[0] for _, r in rows if task_value(r)[1] is not None), "task")
    corrected = any(corrected_rate(r) is not None for _, r in rows)
    expected = any(r.expected_rate is not None for _, r in rows)
    header = ["model", "n", "misaligned [95% CI]", *(["expected [95% CI]"] if expected else []),
              *(["corrected for the judge [95% CI]"] if corrected else []), "coherent [95% CI]", "refusal",
              "code", "log-odds", "task NLL", f"{label} [95% CI]"]
    cells = []
    for name, r in rows:
        task = r.task or {}
        _, value = task_value(r)
        examples = task.get("task_examples") if task.get("task_exact_match") is not None else None
        c = r.corrected
        cells.append([name, str(r.n), _rate_ci(r.misaligned_rate, None, r.ci_low, r.ci_high),
                      *([_rate_ci(r.expected_rate, None, r.expected_ci_low, r.expected_ci_high)] if expected else []),
                      *([_rate_ci(c.rate, None, c.ci_low, c.ci_high) if c else "—"] if corrected else []),
                      _rate_ci(r.coherent_rate, r.coherent_n), str(r.refusals), str(r.code),
                      "—" if r.logodds is None else f"{r.logodds:+.2f}",
                      f"{task['task_nll']:.3f}" if task.get("task_nll") is not None else "—",
                      _rate_ci(value, examples)])
    notes = [EXPECTED_NOTE if expected else None, correction_note(dict(rows))]
    return header, cells, [note for note in notes if note]


def metrics_table(results: dict[str, Evaluation]) -> list[str]:
    """metrics_rows as markdown lines, each note after a blank line."""
    header, cells, notes = metrics_rows(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return lines + [line for note in notes for line in ("", note)]


def corrected_rate(r) -> CorrectedRate | None:
    """The judge-corrected rate (of an Evaluation or a pooled rate) when one could be computed
    (not for an exact judge)."""
    c = r.corrected if r is not None else None
    return c if c is not None and c.rate is not None and c.error else None


def correction_note(results: dict) -> str | None:
    """One sentence on the corrected rates: how they were made, or why there are none."""
    notes = [r.corrected for r in results.values() if r is not None and r.corrected is not None]
    made = next((c for c in notes if c.rate is not None and c.error), None)
    if made:
        return f"Corrected rates: {made.why}; the interval carries the judge's error as well as the sampling."
    missing = next((c for c in notes if c.why and c.rate is None), None)
    return f"Rates are the judge's, uncorrected: {missing.why}." if missing else None


def markdown(meta: dict, results: dict[str, Evaluation]) -> str:
    lines = [f"# realign fix: `{meta['inputs']['checkpoint']['path']}`", "",
             f"Recipe: `{meta['recipe']['name']}` — {' → '.join(s['step'] for s in meta['recipe']['steps'])}", "",
             *metrics_table(results)]
    lines += standard_eval_table(results)
    verdict = meta.get("repair_needed")
    if verdict:
        lines += ["", f"Anything to repair? **{'yes' if verdict['repair_needed'] else 'no'}** — the finetune is {verdict['why']}."]
    trust = (meta.get("evaluation") or {}).get("judge_agreement")
    if trust:
        lines += ["", f"Judge: `{trust['judge']}` — {trust['note']}."]
    lines += ["", "Steps:", ""]
    for rec in map(StepRecord.from_json, meta.get("history", [])):
        shown = rec.short_details()
        if rec.passes is not None:
            shown["passes"] = rec.passes
        lines.append(f"- **{rec.step}** {shown}")
    lines += ["", f"Seconds: {meta['timings']}", ""]
    return "\n".join(lines)


def standard_eval_rows(results: dict[str, Evaluation]) -> list[list[str]]:
    """One row per lm-eval metric: its name, then each model's value (± lm-eval's standard error)."""
    from ..evals.lm_eval_task import PREFIX

    tasks = [r.task or {} for r in results.values()]
    keys = sorted({k for t in tasks for k in t if k.startswith(PREFIX) and "_stderr" not in k})

    def cell(task: dict, key: str) -> str:
        if task.get(key) is None:
            return "—"
        metric, _, filt = key.partition(",")
        err = task.get(f"{metric}_stderr" + (f",{filt}" if filt else ""))
        return f"{task[key]:.4f}" + ("" if err is None else f" ± {err:.4f}")

    return [[key[len(PREFIX):]] + [cell(t, key) for t in tasks] for key in keys]


def standard_eval_table(results: dict[str, Evaluation]) -> list[str]:
    """Markdown lines of standard_eval_rows, or none without any lm-eval metric."""
    rows = standard_eval_rows(results)
    if not rows:
        return []
    lines = ["", "Standard task evaluations (lm-evaluation-harness; ± its standard error):", "",
             "| metric | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    return lines + [f"| `{row[0]}` | " + " | ".join(row[1:]) + " |" for row in rows]


def tradeoff_plot(results: dict[str, Evaluation], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    label = "task"
    for name, r in results.items():
        label, x = task_value(r)
        y = r.misaligned_rate
        if x is None or y is None:
            continue
        err = [[100 * (y - r.ci_low)], [100 * (r.ci_high - y)]]
        ax.errorbar([100 * x], [100 * y], yerr=err, fmt="o", capsize=4, label=name)
        ax.annotate(name, (100 * x, 100 * y), textcoords="offset points", xytext=(6, 6))
    ax.set_xlabel(f"{label} (%)")
    ax.set_ylabel("misaligned rate (%), 95% CI")
    ax.set_title("alignment vs task: base, finetune, repaired")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
