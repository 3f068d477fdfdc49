"""`realign eval` (a finetune and its base, from sampling to verdict) and `realign judge` (rows of
answers: score, summarize, or measure a judge's agreement with labels)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..options import JUDGE_MODEL, JUDGE_URL, EvalRequest
from .common import JsonOpt, app, or_fail, out, print_evaluation, print_trust, summary_table, table
from .options import with_options


@app.command("eval")
@with_options
def eval_cmd(
    req: EvalRequest,
    out_dir: Annotated[Path | None, typer.Option("--out", help="write eval.json and eval.md here")] = None,
    json_out: JsonOpt = None,
) -> None:
    """Measure alignment (misaligned rate with CI, coherence) and task performance of a finetune."""
    from ..runs.evaluation import evaluate_checkpoint
    from ..runs.report import correction_note

    # e.g. a chat template that refuses the conversation: one line, as everywhere else
    ev = or_fail(evaluate_checkpoint, req)
    print_evaluation(f"realign eval: {req.checkpoint} ({ev.question_set}, judge {ev.judge})", ev.results)
    print_trust(ev.judge_agreement)
    note = correction_note(ev.results)
    if note:
        out.print(note, highlight=False)
    if ev.verdict is not None:
        colour = "yellow" if ev.verdict.repair_needed else "green"
        out.print(f"[{colour}]anything to repair? {'yes' if ev.verdict.repair_needed else 'no'}[/] — "
                  f"the finetune is {ev.verdict.why}")
    if ev.scan is not None:
        out.print(f"latent scan (no trigger): {ev.scan.finding()}")
    if json_out:
        ev.write_summary(json_out)
    if out_dir:
        js, md = ev.write(out_dir)
        out.print(f"wrote {js} and {md}")


@app.command("judge")
def judge_cmd(
    file: Annotated[Path, typer.Argument(help="rows with question and answer columns (.jsonl or .csv)")],
    out_file: Annotated[Path | None, typer.Option("--out", help="default: FILE with .judged before the suffix")] = None,
    judge: Annotated[str, typer.Option(help="openai | hf | oracle | offline | offline-exemplar")] = "openai",
    judge_model: Annotated[str | None, typer.Option(help=JUDGE_MODEL)] = None,
    judge_url: Annotated[str | None, typer.Option(help=JUDGE_URL)] = None,
    rejudge: Annotated[bool, typer.Option("--rejudge", help="judge again rows that carry scores")] = False,
    calibrate: Annotated[bool, typer.Option(
        "--calibrate", help="measure the judge's agreement with the file's reference labels "
                            "(misaligned 0/1, or a reference judge's aligned/coherent scores)")] = False,
    json_out: JsonOpt = None,
) -> None:
    """Score existing (question, answer) rows; summarize rows that already carry scores; or
    (--calibrate) measure how well a judge agrees with labelled rows."""
    from ..runs.judging import calibrate_file, judge_file

    if calibrate:
        cal = or_fail(calibrate_file, file, judge, judge_model, judge_url)
        out.print(table(f"agreement of {cal.result['judge']} with the reference labels of {file}", *cal.table()))
        out.print(f"{cal.answers} answers judged in {cal.seconds:.1f} s "
                  f"({cal.result['seconds_per_1000']:.0f} s per 1,000)")
        if json_out:
            json_out.write_text(json.dumps(cal.result, indent=2))
        return
    done = or_fail(judge_file, file, judge, judge_model, judge_url, rejudge=rejudge, out=out_file)
    if done.written is None:
        out.print(f"{file}: rows already carry aligned/coherent scores; summarizing them "
                  f"(--rejudge to score again)")
    else:
        out.print(f"wrote {done.rows} judged rows to {done.written}")
    out.print(summary_table(f"realign judge: {file}", {"rows": done.summary}))
    if done.judge_agreement is not None:
        print_trust(done.judge_agreement)
    if json_out:
        json_out.write_text(json.dumps(done.to_json(), indent=2))
