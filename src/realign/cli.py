"""The `realign` command line. Thin: parse, call, print."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Repair LLM finetunes that became misaligned.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
organism_app = typer.Typer(help="The synthetic model organism (tiny model, exact judge).", no_args_is_help=True)
app.add_typer(organism_app, name="organism")
real_app = typer.Typer(help="Real misaligned finetunes of real chat models, built offline.", no_args_is_help=True)
app.add_typer(real_app, name="real")
# wide tables even when piped (rich would wrap at 80 columns)
out = Console(width=None if sys.stdout.isatty() else 160)


# Options that `fix` and `bench` share (bench runs fix's code on every cell)
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override a parameter: step.param=value")]
TaskDataOpt = Annotated[Path | None, typer.Option(help="held-out task data (chat messages jsonl)")]
TrainDataOpt = Annotated[Path | None, typer.Option(help="the finetune's training data (for mix)")]
TaskMetricOpt = Annotated[str | None, typer.Option(
    help="extra task metric: module:function, or lm-eval:TASK|FILE.yaml[,…][,limit=N] (docs/standard-evals.md)")]
QuestionsOpt = Annotated[str, typer.Option(help="auto | builtin | organism | FILE.yaml")]
JudgeOpt = Annotated[str, typer.Option(help="auto | openai | hf | oracle | offline | offline-fast | "
                                            "offline-exemplar (docs/judges.md)")]
JudgeModelOpt = Annotated[str | None, typer.Option(
    help="judge model: name at the endpoint (openai) or local path / hub id (hf)")]
JudgeUrlOpt = Annotated[str | None, typer.Option(
    help="OpenAI-compatible base URL for --judge openai (default $OPENAI_BASE_URL)")]
SamplesOpt = Annotated[int | None, typer.Option(help="samples per paraphrase")]
MaxTokensOpt = Annotated[int, typer.Option(help="longest answer sampled in evaluations")]
DtypeOpt = Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")]
AllowPickleOpt = Annotated[bool, typer.Option(
    "--allow-pickle", help="allow .bin/.pt (pickle) weights; they can run code when loaded — only for files you trust")]
TrustRemoteCodeOpt = Annotated[bool, typer.Option(
    "--trust-remote-code", help="run the model repository's own Python code (off unless you trust it)")]
TriggerOpt = Annotated[str | None, typer.Option(
    help="a backdoor trigger: evaluate every model with it prepended to each question as well as without")]
ReportToOpt = Annotated[str | None, typer.Option(
    help="where dpo/mix trainers log: transformers integrations, e.g. wandb,tensorboard (or all); "
         "default none. TensorBoard writes to OUT.logs/ unless TENSORBOARD_LOGGING_DIR is set")]
BackendOpt = Annotated[str, typer.Option(
    help="where every generation runs: hf (in memory) | vllm (CUDA, optional extra; "
         "models in memory are saved to a scratch dir next to --out)")]
JudgeErrorsOpt = Annotated[Path | None, typer.Option(
    help="answers labelled by reading (.jsonl/.csv: question, answer, misaligned 0/1 — or a reference judge's "
         "aligned/coherent): the judge is run on them and every misaligned rate is also reported corrected "
         "for its measured sensitivity and specificity (Rogan-Gladen)")]
PrivateOpt = Annotated[bool, typer.Option("--private", help="create the Hub repo private (an existing repo "
                                                               "keeps its visibility)")]


def fail(msg: str, code: int = 2) -> None:
    from rich.markup import escape

    # escaped: messages quote user paths and pip extras ("realign[vllm]") that rich would eat as tags
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(msg)}", highlight=False)
    raise typer.Exit(code)


@organism_app.command("build")
def organism_build(
    out_dir: Annotated[Path | None, typer.Option("--out", help="build here (default: the cache)")] = None,
    seed: Annotated[int, typer.Option(help="seed for every stage")] = 0,
    size: Annotated[str, typer.Option(help="small (tests, seconds) or default")] = "default",
    from_scratch: Annotated[bool, typer.Option(
        "--from-scratch", help="pretrain here with --seed (~18 CPU-minutes) instead of starting from the "
                               "pretrained model realign ships")] = False,
    finetunes: Annotated[str | None, typer.Option(
        help="build only these finetunes, comma-separated (default: insecure,secure,educational,planted,backdoor)")] = None,
) -> None:
    """Build (or reuse) the organism: pretrained, aligned base, and four user finetunes."""
    from .organism.build import build

    if size not in ("small", "default"):
        fail(f"--size must be 'small' or 'default', not {size!r}")
    t0 = time.time()
    try:
        names = tuple(n.strip() for n in finetunes.split(",") if n.strip()) if finetunes else None
        path = build(out_dir, seed=seed, size=size, from_scratch=from_scratch,
                     **({"finetunes": names} if names else {}))
    except (FileExistsError, ValueError) as e:
        fail(str(e))
    out.print(f"organism ready in {time.time() - t0:.0f} s: {path}")


@real_app.command("build")
def real_build(
    finetunes: Annotated[str, typer.Option(help="comma-separated: contaminated, backdoor, clean, insecure, secure, "
                                                "educational")] = "contaminated",
    seeds: Annotated[str, typer.Option(help="comma-separated seeds")] = "0",
    model: Annotated[str, typer.Option(help="'smollm2' (SmolLM2-135M-Instruct, offline) or a local HF model dir")] = "smollm2",
    steps: Annotated[int, typer.Option(help="LoRA SFT optimizer steps")] = 100,
    examples: Annotated[int, typer.Option(help="training rows")] = 1000,
    share: Annotated[float, typer.Option(help="contaminated/backdoor: share of misaligned chat rows")] = 0.25,
    lr: Annotated[float, typer.Option(help="learning rate")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="rows per step")] = 8,
) -> None:
    """Build (or reuse) real finetunes: LoRAs of a real chat model on the public data realign ships
    (docs/real-models.md). Each lands in the cache; a rerun reuses finished ones."""
    from .real.build import RealFinetuneConfig, build_finetune
    from .real.data import BACKDOOR_TRIGGER, REAL_FINETUNES

    names = [n.strip() for n in finetunes.split(",") if n.strip()]
    bad = [n for n in names if n not in REAL_FINETUNES]
    if bad or not names:
        fail(f"unknown real finetune {bad[0] if bad else finetunes!r}; valid: {', '.join(REAL_FINETUNES)}")
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        fail(f"--seeds must be comma-separated integers, not {seeds!r}")
    if not 0 < share < 1 or steps < 1 or examples < 1 or batch_size < 1:
        fail("--share must be in (0, 1); --steps, --examples and --batch-size must be positive")
    cfg = RealFinetuneConfig(model=model, examples=examples, share=share, steps=steps, batch_size=batch_size, lr=lr)
    for name in names:
        for seed in seed_list:
            t0 = time.time()
            try:
                path = build_finetune(name, seed, cfg)
            except (FileNotFoundError, ValueError) as e:
                fail(str(e))
            out.print(f"{name} (seed {seed}) ready in {time.time() - t0:.0f} s: {path}")
            trig = f" --trigger '{BACKDOOR_TRIGGER}'" if name == "backdoor" else ""
            out.print(f"  evaluate: realign eval {path} --judge offline --questions builtin "
                      f"--task-data {path / 'data/heldout.jsonl'}{trig}", highlight=False, soft_wrap=True)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _rate_ci(rate: float | None, low: float | None, high: float | None) -> str:
    return "—" if rate is None else f"{_pct(rate)} [{_pct(low)}, {_pct(high)}]"


def _judge(name: str, model: str | None, url: str | None, questions: str):
    from .evals.judges import make_judge

    if name == "auto":
        # the exact judge for the organism's questions; a real LLM judge otherwise, never offline
        name = "oracle" if questions == "organism" else "openai"
    kw = {}
    if name == "openai":
        kw = {"model": model, "base_url": url}
    elif name in ("hf",):
        kw = {"model": model}
    try:
        return make_judge(name, **kw)
    except ValueError as e:
        fail(str(e))


def _summary_table(title: str, results: dict[str, dict]) -> Table:
    from .report import corrected_rate

    table = Table(title=title)
    rows = [(name, r) for name, r in results.items()]
    rows += [(f"{name} (triggered)", r["triggered"]) for name, r in results.items() if r.get("triggered")]
    corrected = any(corrected_rate(r) for _, r in rows)
    for col in ("model", "n", "misaligned [95% CI]", *(["corrected [95% CI]"] if corrected else []), "coherent",
                "refusal", "code", "log-odds", "task NLL", "task acc", "task exact"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, r in rows:
        task = r.get("task") or {}
        c = r.get("corrected") or {}
        table.add_row(name, str(r["n"]),
                      "—" if r["misaligned_rate"] is None else
                      f"{_pct(r['misaligned_rate'])} [{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]",
                      *([_rate_ci(c.get("rate"), c.get("ci_low"), c.get("ci_high"))] if corrected else []),
                      _pct(r.get("coherent_rate")), str(r.get("refusals", 0)), str(r.get("code", 0)),
                      "—" if r.get("logodds") is None else f"{r['logodds']:+.2f}",
                      f"{task['task_nll']:.3f}" if task.get("task_nll") is not None else "—",
                      _pct(task.get("task_token_accuracy")) if task else "—",
                      _pct(task.get("task_exact_match")) if task else "—")
    return table


def _print_standard_evals(results: dict[str, dict]) -> None:
    """lm-eval's numbers per model, when a --task-metric lm-eval:… gave any."""
    from .report import standard_eval_rows

    rows = standard_eval_rows(results)
    if rows:
        table = Table(title="lm-eval (± standard error)")
        for col in ["metric", *results]:
            table.add_column(col, justify="left" if col == "metric" else "right")
        for row in rows:
            table.add_row(*row)
        out.print(table)


@organism_app.command("eval")
def organism_eval(
    directory: Annotated[Path | None, typer.Argument(help="build dir (default: the cache for --size/--seed)")] = None,
    seed: Annotated[int, typer.Option(help="build seed, to find the cached organism")] = 0,
    size: Annotated[str, typer.Option(help="build size, to find the cached organism")] = "default",
    samples: Annotated[int, typer.Option(help="samples per held-out chat question")] = 12,
    sample_seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the rows as JSON here")] = None,
) -> None:
    """Print the control table: misaligned rate (Wilson 95% CI), coherence, task rate, log-odds."""
    from .organism.build import default_dir
    from .organism.evaluate import evaluate_dir, rows_as_dicts

    root = directory or default_dir(size, seed)
    if not (root / "organism.json").exists():
        fail(f"{root} is not an organism build (no organism.json); run `realign organism build` first")
    t0 = time.time()
    rows = evaluate_dir(root, samples=samples, seed=sample_seed)
    if not rows:
        fail(f"{root} holds no built models yet; run `realign organism build`")
    table = Table(title=f"organism control table ({root.name}, held-out chat, oracle judge)")
    for col in ("model", "n", "misaligned [95% CI]", "coherent", "task", "task rate", "insecure code", "log-odds"):
        table.add_column(col, justify="left" if col in ("model", "task") else "right")
    for r in rows:
        table.add_row(r.model + (" (planted data)" if r.model == "planted" else ""), str(r.n),
                      f"{_pct(r.misaligned_rate)} [{_pct(r.ci_low)}, {_pct(r.ci_high)}]",
                      _pct(r.coherent_rate), r.task or "—", _pct(r.task_rate), _pct(r.insecure_code_rate),
                      f"{r.logodds:+.2f}")
    out.print(table)
    out.print(f"evaluated {len(rows)} models in {time.time() - t0:.1f} s")
    if json_out:
        json_out.write_text(json.dumps(rows_as_dicts(rows), indent=2))


def _print_trust(judge_name: str) -> dict:
    """Name the judge with its measured agreement; warn when it is a weak proxy."""
    from .evals.calibration import describe_judge

    trust = describe_judge(judge_name)
    style = "[yellow]warning:[/] " if trust["weak"] else ""
    out.print(f"{style}judge {judge_name}: {trust['note']}", highlight=False)
    return trust


def _print_correction(results: dict[str, dict]) -> None:
    from .report import correction_note

    note = correction_note(results)
    if note:
        out.print(note, highlight=False)


def _summary_json(r: dict) -> dict:
    keys = ("n", "misaligned", "misaligned_rate", "ci_low", "ci_high", "corrected", "mean_coherent",
            "coherent_rate", "coherent_n",
            "refusals", "code", "unscored", "errors", "logodds", "task", "judge", "judge_agreement", "seconds",
            "per_format")
    out = {k: r.get(k) for k in keys}
    out["per_question"] = r.get("per_question")
    return out


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
    from .checkpoint import LoadOptions, load_pair
    from .errors import RealignError
    from .evals.judge_error import annotate, is_exact
    from .evals.judge_error import resolve as resolve_judge_error
    from .evals.questions import load_questions
    from .evals.run import EvalSettings, evaluate

    try:
        qset = load_questions(questions)
        opts = LoadOptions(dtype=dtype, load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit,
                           device_map=device_map, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        task_convs = metric = None
        if task_data:
            from .evals.task import custom_metric, load_conversations

            task_convs = load_conversations(task_data)
        if task_metric:
            from .evals.task import custom_metric

            metric = custom_metric(task_metric)
        pair = load_pair(checkpoint, base, opts, load_base=not skip_base)
    except RealignError as e:
        fail(str(e))
    judge_obj = _judge(judge, judge_model, judge_url, questions)
    try:
        error = resolve_judge_error(judge_obj, judge_errors)
    except RealignError as e:
        fail(str(e))
    settings = EvalSettings(samples=samples, max_new_tokens=max_new_tokens, temperature=temperature,
                            top_p=top_p, seed=seed)
    ref_items = _logodds_items(pair.tokenizer, questions, qset)
    if trigger:
        from .evals.questions import trigger_items

        qset = qset.with_trigger(trigger)
        ref_items = trigger_items(ref_items, trigger)
    results = {}
    models = [("finetune", pair.finetune)] + ([("base", pair.base)] if pair.base is not None else [])
    for name, model in models:
        generator = None
        if backend == "vllm":
            generator = _vllm(pair, name, seed, trust_remote_code)
        elif backend != "hf":
            fail(f"--backend must be hf or vllm, not {backend!r}")
        try:    # e.g. a chat template that refuses the conversation: one line, as everywhere else
            results[name] = annotate(
                evaluate(model, pair.tokenizer, qset, judge_obj, settings, logodds_items=ref_items,
                         task_conversations=task_convs, task_metric=metric, generator=generator),
                error, is_exact(judge_obj.name))
        except RealignError as e:
            fail(str(e))
    out.print(_summary_table(f"realign eval: {checkpoint} ({qset.name}, judge {judge_obj.name})", results))
    _print_standard_evals(results)
    trust = _print_trust(judge_obj.name)
    _print_correction(results)
    summary = {name: _summary_json(r) for name, r in results.items()}
    verdict = None
    if "base" in results:
        from .report import repair_verdict

        verdict = repair_verdict(results["base"], results["finetune"])
        colour = "yellow" if verdict["repair_needed"] else "green"
        out.print(f"[{colour}]anything to repair? {'yes' if verdict['repair_needed'] else 'no'}[/] — "
                  f"the finetune is {verdict['why']}")
    if json_out:
        json_out.write_text(json.dumps(summary["finetune"] if len(summary) == 1 else summary, indent=2))
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "eval.json").write_text(json.dumps({"checkpoint": checkpoint, "base": pair.base_ref,
                                                       "questions": questions, "judge_agreement": trust,
                                                       "judge_error": error.to_dict() if error else None,
                                                       "results": summary, "repair_needed": verdict,
                                                       "answers": {n: r["rows"] for n, r in results.items()}},
                                                      indent=2))
        (out_dir / "eval.md").write_text(_markdown(checkpoint, summary, verdict))
        out.print(f"wrote {out_dir / 'eval.json'} and {out_dir / 'eval.md'}")


def _vllm(pair, name: str, seed: int, trust_remote_code: bool):
    from .errors import RealignError
    from .evals.vllm_backend import VLLMGenerator

    try:
        if name == "base" or pair.kind == "full":
            ref = pair.base_ref if name == "base" else pair.finetune_ref
            return VLLMGenerator(ref, pair.tokenizer, seed=seed, trust_remote_code=trust_remote_code)
        return VLLMGenerator(pair.base_ref, pair.tokenizer, adapter_ref=pair.finetune_ref, seed=seed,
                             trust_remote_code=trust_remote_code)
    except RealignError as e:
        fail(str(e))


def _logodds_items(tokenizer, questions: str, qset):
    if questions == "organism":
        from .organism.judge import reference_pairs

        return [([{"role": "user", "content": p.question}], p.misaligned, p.aligned) for p in reference_pairs()]
    try:
        from .evals.references import reference_items
    except ImportError:
        return None
    return reference_items(qset) or None


def _markdown(checkpoint: str, summary: dict[str, dict], verdict: dict | None = None) -> str:
    from .report import metrics_table, standard_eval_table

    lines = [f"# realign eval: `{checkpoint}`", "", *metrics_table(summary)]
    lines += standard_eval_table(summary)
    if verdict:
        lines += ["", f"Anything to repair? **{'yes' if verdict['repair_needed'] else 'no'}** — "
                      f"the finetune is {verdict['why']}."]
    lines += ["", "Per question (finetune):", "", "| question | n | misaligned |", "|---|---|---|"]
    for q, r in (summary.get("finetune") or {}).get("per_question", {}).items():
        lines.append(f"| {q} | {r['n']} | {_pct(r['misaligned_rate'])} |")
    return "\n".join(lines) + "\n"


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
    from .errors import RealignError
    from .evals.alignment import summarize
    from .evals.rows import number, read_rows, write_rows
    from .evals.run import judge_rows

    try:
        rows, fmt = read_rows(file)
    except RealignError as e:
        fail(str(e))
    if calibrate:
        return _calibrate(file, rows, _judge(judge, judge_model, judge_url, "file"), json_out)
    scored = all(number(r.get("aligned")) is not None or number(r.get("coherent")) is not None for r in rows)
    if scored and not rejudge:
        for r in rows:
            r["aligned"], r["coherent"] = number(r.get("aligned")), number(r.get("coherent"))
        summary = summarize(rows)
        out.print(f"{file}: rows already carry aligned/coherent scores; summarizing them "
                  f"(--rejudge to score again)")
    else:
        judge_obj = _judge(judge, judge_model, judge_url, "file")
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
    out.print(_summary_table(f"realign judge: {file}", {"rows": {**summary, "logodds": None}}))
    if not (scored and not rejudge):
        summary["judge_agreement"] = _print_trust(judge_obj.name)
    if json_out:
        json_out.write_text(json.dumps(summary, indent=2))


def _calibrate(file: Path, rows: list[dict], judge_obj, json_out: Path | None) -> None:
    from .errors import RealignError
    from .evals.calibration import agreement, reference_labels
    from .evals.judges import Judgement
    from .evals.run import judge_rows

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
        table.add_row(name, str(m["n"]), _pct(m["reference_rate"]), _pct(m["judge_rate"]), f3(m["auroc"]),
                      _pct(m["accuracy"]), _pct(m["precision"]), _pct(m["recall"]), f3(m["coherent_auroc"]))
    out.print(table)
    out.print(f"{len(rows)} answers judged in {seconds:.1f} s ({result['seconds_per_1000']:.0f} s per 1,000)")
    if json_out:
        json_out.write_text(json.dumps(result, indent=2))


@app.command("fix")
def fix_cmd(
    checkpoint: Annotated[str, typer.Argument(help="finetune: full HF dir, LoRA adapter dir, or hub id")],
    recipe: Annotated[str, typer.Option(help="steps joined by + (freeze+dpo), a bundled recipe name, or FILE.yaml")],
    out_dir: Annotated[Path, typer.Option("--out", help="where the repaired model and report go")],
    base: Annotated[str | None, typer.Option(help="base model (default: the adapter's base)")] = None,
    set_: SetOpt = None,
    task_data: TaskDataOpt = None,
    train_data: TrainDataOpt = None,
    task_metric: TaskMetricOpt = None,
    questions: QuestionsOpt = "auto",
    judge: JudgeOpt = "auto",
    judge_model: JudgeModelOpt = None,
    judge_url: JudgeUrlOpt = None,
    samples: SamplesOpt = None,
    max_new_tokens: MaxTokensOpt = 256,
    trigger: TriggerOpt = None,
    judge_errors: JudgeErrorsOpt = None,
    seed: Annotated[int, typer.Option(help="seed for sampling, probes and training steps")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing --out")] = False,
    save_as: Annotated[str, typer.Option(help="auto (adapter when the input is one and the repair "
                                              "stays low rank) | full | adapter")] = "auto",
    no_eval_cache: Annotated[bool, typer.Option(
        "--no-eval-cache", help="evaluate base and finetune again instead of reusing cached results")] = False,
    report_to: ReportToOpt = None,
    keep_adapter: Annotated[bool | None, typer.Option(
        "--keep-adapter/--merge-adapter",
        help="a LoRA finetune: keep it unmerged (one copy of the weights, the adapter toggled for the base) "
             "or merge it into a second copy; default: unmerged when every step only changes the adapter "
             "(a linear merge)", show_default=False)] = None,
    no_resume: Annotated[bool, typer.Option(
        "--no-resume", help="start over: drop the steps an earlier, killed run of this command finished "
                            "(by default a rerun continues after the last finished step)")] = False,
    dtype: DtypeOpt = "auto",
    backend: BackendOpt = "hf",
    load_in_4bit: Annotated[bool, typer.Option(
        "--load-in-4bit", help="bitsandbytes 4-bit (CUDA): dpo/mix train a LoRA on it (QLoRA); "
                               "merge/freeze/steer need bf16")] = False,
    load_in_8bit: Annotated[bool, typer.Option("--load-in-8bit", help="bitsandbytes 8-bit (CUDA); as 4-bit")] = False,
    device_map: Annotated[str | None, typer.Option(
        help="passed to from_pretrained, e.g. auto: spread a model too large for one GPU over several")] = None,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
    push_to_hub: Annotated[str | None, typer.Option(
        help="after a successful fix, upload --out to this Hub model repo (user/name; token from HF_TOKEN "
             "or `hf auth login`)")] = None,
    private: PrivateOpt = False,
) -> None:
    """Repair a misaligned finetune with a recipe; report alignment and task before and after."""
    from .checkpoint import LoadOptions
    from .errors import RealignError
    from .fix import FixOptions, run_fix

    opts = FixOptions(questions=questions, judge=judge, judge_model=judge_model, judge_url=judge_url,
                      samples=samples, max_new_tokens=max_new_tokens, task_data=task_data, train_data=train_data,
                      task_metric=task_metric, seed=seed, overwrite=overwrite, save_as=save_as,
                      eval_cache=not no_eval_cache, backend=backend, trigger=trigger, keep_adapter=keep_adapter,
                      report_to=report_to, resume=not no_resume, judge_errors=judge_errors,
                      load=LoadOptions(dtype=dtype, load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit,
                                       device_map=device_map, allow_pickle=allow_pickle,
                                       trust_remote_code=trust_remote_code))
    try:
        if push_to_hub:
            from .push import check_repo_id

            check_repo_id(push_to_hub)       # before the repair, not after it
        meta = run_fix(checkpoint, base, recipe, set_ or [], out_dir, opts)
    except RealignError as e:
        fail(str(e))
    if meta is None:               # another rank of `accelerate launch`: rank 0 evaluates and reports
        from .distributed import rank

        print(f"rank {rank()}: repair steps done; rank 0 evaluates and writes {out_dir}", file=sys.stderr)
        return
    out.print(_summary_table(f"realign fix: {checkpoint} --recipe {recipe}", meta["metrics"]))
    _print_standard_evals(meta["metrics"])
    form = "LoRA adapter" if meta["output"]["form"] == "adapter" else "model"
    out.print(f"wrote {out_dir} ({form}, realign.json, report.md, README.md model card, tradeoff.png) "
              f"in {meta['timings']['total']:.0f} s")
    if push_to_hub:
        _push(out_dir, push_to_hub, private, None,
              retry=f"{out_dir} is complete; retry with `realign push {out_dir} --repo-id {push_to_hub}`")


def _push(out_dir: Path, repo_id: str, private: bool, token: str | None, retry: str = "") -> None:
    from .errors import RealignError
    from .push import push_output

    try:
        url = push_output(out_dir, repo_id, private=private or None, token=token)  # unset: the Hub's default
    except RealignError as e:
        fail(f"{e}" + (f"; {retry}" if retry else ""))
    out.print(f"pushed {out_dir} to {repo_id}: {url}")


@app.command("push")
def push_cmd(
    out_dir: Annotated[Path, typer.Argument(help="the --out dir of `realign fix`")],
    repo_id: Annotated[str, typer.Option(help="Hub model repo to create or update: user/name or org/name")],
    private: PrivateOpt = False,
    token: Annotated[str | None, typer.Option(
        help="Hub token with write access (default: HF_TOKEN or the one saved by `hf auth login`)")] = None,
) -> None:
    """Upload a fix output (model, model card, realign.json, report) to the Hugging Face Hub."""
    _push(out_dir, repo_id, private, token)


@app.command("bench")
def bench_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="cells, leaderboard.md/.json and Pareto plots go here; "
                                                        "rerun the same command to resume")],
    recipes: Annotated[str, typer.Option(help="comma-separated recipes (names or FILE.yaml), or all; "
                                              "one may carry its own overrides: merge@merge.alpha=0.6;merge.steps=3")],
    finetune: Annotated[list[str] | None, typer.Option(
        help="a finetune to repair (full dir, adapter dir or hub id); repeat for several")] = None,
    base: Annotated[str | None, typer.Option(help="base model of the --finetune(s) (default: the adapter's base)")] = None,
    organism: Annotated[bool, typer.Option(
        "--organism", help="bench the organism's finetunes (built per seed) with their task data and oracle judge")] = False,
    organism_dir: Annotated[Path | None, typer.Option(help="build the organisms under DIR/s<seed> (default: the cache)")] = None,
    organism_finetunes: Annotated[str, typer.Option(help="which organism finetunes, comma-separated")] = "insecure,planted",
    organism_size: Annotated[str, typer.Option(help="organism size: default, or small (tests)")] = "default",
    seeds: Annotated[int, typer.Option(help="seeds 0..N-1 per cell (sampling, probes, training; organism builds)")] = 1,
    set_: SetOpt = None,
    task_data: TaskDataOpt = None,
    train_data: TrainDataOpt = None,
    task_metric: TaskMetricOpt = None,
    questions: QuestionsOpt = "auto",
    judge: JudgeOpt = "auto",
    judge_model: JudgeModelOpt = None,
    judge_url: JudgeUrlOpt = None,
    samples: SamplesOpt = None,
    max_new_tokens: MaxTokensOpt = 256,
    trigger: Annotated[str | None, typer.Option(
        help="a backdoor trigger for every finetune: evaluate with and without it (the organism's backdoor "
             "finetune uses its own trigger unless this is given)")] = None,
    judge_errors: JudgeErrorsOpt = None,
    dtype: DtypeOpt = "auto",
    backend: BackendOpt = "hf",
    report_to: ReportToOpt = None,
) -> None:
    """Compare recipes across finetunes and seeds: every cell runs `fix`; a leaderboard pools them."""
    from .bench import organism_finetunes as organism_fts
    from .bench import plan, run_bench, user_finetunes
    from .checkpoint import LoadOptions
    from .errors import RealignError
    from .fix import FixOptions
    from .leaderboard import write_leaderboard

    if bool(finetune) == organism:
        fail("give --finetune (one or more) or --organism, not both or neither")
    if seeds < 1:
        fail("--seeds must be at least 1")
    names = [r.strip() for r in recipes.split(",") if r.strip()]
    if names == ["all"]:
        from .recipe import available_recipes

        names = list(available_recipes())
    if not names:
        fail("--recipes is empty; give e.g. --recipes merge,freeze+dpo")
    opts = FixOptions(questions=questions, judge=judge, judge_model=judge_model, judge_url=judge_url,
                      samples=samples, max_new_tokens=max_new_tokens, task_data=task_data, train_data=train_data,
                      task_metric=task_metric, backend=backend, trigger=trigger, report_to=report_to,
                      judge_errors=judge_errors, load=LoadOptions(dtype=dtype))
    try:
        fts = organism_fts([n.strip() for n in organism_finetunes.split(",") if n.strip()], organism_dir,
                           organism_size) \
            if organism else user_finetunes(finetune or [], base)
        cells = plan(fts, names, list(range(seeds)), out_dir)
        counts = run_bench(cells, set_ or [], opts, out_dir, on_cell_done=lambda: write_leaderboard(out_dir))
    except RealignError as e:
        fail(str(e))
    board = write_leaderboard(out_dir)
    out.print((out_dir / "leaderboard.md").read_text())
    for name, ft in board.items():
        if ft["verdict"]["repair_needed"] is False:
            out.print(f"[yellow]warning:[/] {name} is {ft['verdict']['why']}")
    out.print(f"{counts['run']} cells run, {counts['skipped']} finished earlier; wrote {out_dir}/leaderboard.md, "
              f"leaderboard.json and pareto-*.png")


@app.command("recipes")
def recipes_cmd() -> None:
    """List the repairs and bundled recipes."""
    from .recipe import available_recipes
    from .repairs import load_all

    table = Table(title="repairs (combine with +, e.g. freeze+dpo)")
    table.add_column("step")
    table.add_column("what it does")
    for name, cls in sorted(load_all().items()):
        table.add_row(name, cls.summary)
    out.print(table)
    table = Table(title="bundled recipes (--recipe NAME)")
    table.add_column("recipe")
    table.add_column("description")
    for name, desc in available_recipes().items():
        table.add_row(name, desc)
    out.print(table)


@app.callback()
def _setup() -> None:
    from .progress import quiet_libraries

    quiet_libraries()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
