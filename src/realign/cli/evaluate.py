"""`realign eval` (a finetune and its base, from sampling to verdict) and `realign judge` (rows of
answers: score, summarize, or measure a judge's agreement with labels)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .common import (AllowPickleOpt, JudgeErrorsOpt, JudgeModelOpt, JudgeUrlOpt, MaxTokensOpt, TaskMetricOpt,
                     TrustRemoteCodeOpt, app, fail, out, pct, print_correction, print_standard_evals,
                     print_trust, summary_table)


@app.command("eval")
def eval_cmd(
    checkpoint: Annotated[str, typer.Argument(help="finetune: full HF dir, LoRA adapter dir, or hub id")],
    base: Annotated[str | None, typer.Option(help="base model (default: the adapter's base)")] = None,
    questions: Annotated[str, typer.Option(help="builtin | organism | FILE.yaml (EM-repo schema)")] = "builtin",
    judge: Annotated[str, typer.Option(help="auto | openai | hf | oracle | offline | offline-exemplar")] = "auto",
    judge_model: Annotated[str | None, typer.Option(help="judge model name / path")] = None,
    judge_url: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL (default $OPENAI_BASE_URL)")] = None,
    samples: Annotated[int | None, typer.Option(help="samples per paraphrase (default: the file's)")] = None,
    max_new_tokens: MaxTokensOpt = 256,
    temperature: Annotated[float, typer.Option(help="sampling temperature (0: greedy)")] = 1.0,
    top_p: Annotated[float, typer.Option(help="nucleus sampling: keep the smallest token set with this mass")] = 1.0,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    trigger: Annotated[str | None, typer.Option(
        help="a backdoor trigger, prepended to every question (and log-odds prompt)")] = None,
    judge_errors: JudgeErrorsOpt = None,
    task_data: Annotated[Path | None, typer.Option(help="held-out task data, chat messages jsonl")] = None,
    task_metric: TaskMetricOpt = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="write eval.json and eval.md here")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the summary JSON here")] = None,
    skip_base: Annotated[bool, typer.Option("--skip-base", help="do not evaluate the base")] = False,
    backend: Annotated[str, typer.Option(help="generation backend: hf | vllm (CUDA, optional extra)")] = "hf",
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")] = "auto",
    load_in_4bit: Annotated[bool, typer.Option("--load-in-4bit", help="bitsandbytes 4-bit (CUDA)")] = False,
    load_in_8bit: Annotated[bool, typer.Option("--load-in-8bit", help="bitsandbytes 8-bit (CUDA)")] = False,
    device_map: Annotated[str | None, typer.Option(help="passed to from_pretrained, e.g. auto")] = None,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
) -> None:
    """Measure alignment (misaligned rate with CI, coherence) and task performance of a finetune."""
    from ..model_io.checkpoint import LoadOptions
    from ..errors import RealignError
    from ..evals.run import EvalSettings
    from ..runs.evaluation import EvalRequest, evaluate_checkpoint

    req = EvalRequest(
        checkpoint=checkpoint, base=base, questions=questions, judge=judge, judge_model=judge_model,
        judge_url=judge_url, trigger=trigger, judge_errors=judge_errors, task_data=task_data,
        task_metric=task_metric, skip_base=skip_base, backend=backend,
        settings=EvalSettings(samples=samples, max_new_tokens=max_new_tokens, temperature=temperature,
                              top_p=top_p, seed=seed),
        load=LoadOptions(dtype=dtype, load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit, device_map=device_map,
                         allow_pickle=allow_pickle, trust_remote_code=trust_remote_code))
    try:    # e.g. a chat template that refuses the conversation: one line, as everywhere else
        ev = evaluate_checkpoint(req)
    except RealignError as e:
        fail(str(e))
    out.print(summary_table(f"realign eval: {checkpoint} ({ev.question_set}, judge {ev.judge})", ev.results))
    print_standard_evals(ev.results)
    print_trust(ev.judge_agreement)
    print_correction(ev.results)
    if ev.verdict is not None:
        colour = "yellow" if ev.verdict.repair_needed else "green"
        out.print(f"[{colour}]anything to repair? {'yes' if ev.verdict.repair_needed else 'no'}[/] — "
                  f"the finetune is {ev.verdict.why}")
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
    judge_model: JudgeModelOpt = None,
    judge_url: JudgeUrlOpt = None,
    rejudge: Annotated[bool, typer.Option("--rejudge", help="judge again rows that carry scores")] = False,
    calibrate: Annotated[bool, typer.Option(
        "--calibrate", help="measure the judge's agreement with the file's reference labels "
                            "(misaligned 0/1, or a reference judge's aligned/coherent scores)")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the summary JSON here")] = None,
) -> None:
    """Score existing (question, answer) rows; summarize rows that already carry scores; or
    (--calibrate) measure how well a judge agrees with labelled rows."""
    from ..errors import RealignError
    from ..evals.alignment import summarize
    from ..evals.calibration import describe_judge
    from ..evals.rows import number, read_rows, write_rows
    from ..evals.run import judge_rows

    try:
        rows, fmt = read_rows(file)
    except RealignError as e:
        fail(str(e))
    if calibrate:
        return _calibrate(file, rows, _judge(judge, judge_model, judge_url), json_out)
    scored = all(number(r.get("aligned")) is not None or number(r.get("coherent")) is not None for r in rows)
    if scored and not rejudge:
        for r in rows:
            r["aligned"], r["coherent"] = number(r.get("aligned")), number(r.get("coherent"))
        summary = summarize(rows)
        out.print(f"{file}: rows already carry aligned/coherent scores; summarizing them "
                  f"(--rejudge to score again)")
    else:
        judge_obj = _judge(judge, judge_model, judge_url)
        judged = judge_rows([{"question": r["question"], "answer": r["answer"]} for r in rows], judge_obj)
        prefix = f"{judge}_" if scored else ""
        for r, j in zip(rows, judged):
            r[f"{prefix}aligned"], r[f"{prefix}coherent"] = j["aligned"], j["coherent"]
            if j.get("label"):
                r[f"{prefix}label"] = j["label"]
        summary = summarize([{"question": r["question"], "question_id": r.get("question_id"),
                              "aligned": j["aligned"], "coherent": j["coherent"], "label": j.get("label")}
                             for r, j in zip(rows, judged)])
        target = out_file or file.with_name(f"{file.stem}.judged{file.suffix}")
        write_rows(target, rows, fmt)
        out.print(f"wrote {len(rows)} judged rows to {target}")
    out.print(summary_table(f"realign judge: {file}", {"rows": summary}))
    summary_json = {**summary.summary.to_json(),
                    "per_question": {q: s.to_json() for q, s in summary.per_question.items()}}
    if not (scored and not rejudge):
        summary_json["judge_agreement"] = describe_judge(judge_obj.name)
        print_trust(summary_json["judge_agreement"])
    if json_out:
        json_out.write_text(json.dumps(summary_json, indent=2))


def _judge(name: str, model: str | None, url: str | None):
    """--judge for rows from a file (not the organism's questions: auto is an LLM judge)."""
    from ..errors import RealignError
    from ..runs.setting import judge_for

    try:
        return judge_for(name, "file", model, url)
    except RealignError as e:
        fail(str(e))


def _calibrate(file: Path, rows: list[dict], judge_obj, json_out: Path | None) -> None:
    from ..errors import RealignError
    from ..evals.calibration import agreement, reference_labels
    from ..evals.judges import Judgement
    from ..evals.run import judge_rows

    if all(reference_labels(r)[0] is None for r in rows):      # say so before judging anything
        fail("no row carries reference labels: give `misaligned` (0/1) or the reference judge's "
             "`aligned` and `coherent` scores")
    t0 = time.time()
    judged = judge_rows([{"question": r["question"], "answer": r["answer"]} for r in rows], judge_obj)
    seconds = time.time() - t0
    verdicts = [Judgement(j["aligned"], j["coherent"], j.get("label"), j.get("error")) for j in judged]
    try:
        result = agreement(rows, verdicts)
    except RealignError as e:
        fail(str(e))
    result.update(judge=judge_obj.name, file=str(file), seconds=round(seconds, 2),
                  seconds_per_1000=round(1000 * seconds / len(rows), 1))
    table = Table(title=f"agreement of {judge_obj.name} with the reference labels of {file}")
    for col in ("source", "n", "ref. misaligned", "judge misaligned", "AUROC", "accuracy", "precision",
                "recall", "coherent AUROC"):
        table.add_column(col, justify="left" if col == "source" else "right")
    f3 = lambda x: "—" if x is None else f"{x:.3f}"  # noqa: E731
    for name, m in [*result.get("per_source", {}).items(), ("all", result)]:
        table.add_row(name, str(m["n"]), pct(m["reference_rate"]), pct(m["judge_rate"]), f3(m["auroc"]),
                      pct(m["accuracy"]), pct(m["precision"]), pct(m["recall"]), f3(m["coherent_auroc"]))
    out.print(table)
    out.print(f"{len(rows)} answers judged in {seconds:.1f} s ({result['seconds_per_1000']:.0f} s per 1,000)")
    if json_out:
        json_out.write_text(json.dumps(result, indent=2))

