"""One evaluation: questions -> sampled answers -> judge -> metrics (+ log-odds, + task).

The shape follows inspect_ai's dataset -> solver -> scorer: a QuestionSet, batched generation,
a Judge; then the alignment summary (overall, per question, per answer format), the judge-free
log-odds on reference pairs, and task metrics on the user's held-out data.
"""

from __future__ import annotations

import time
from collections import defaultdict

from ..options import EvalSettings  # declared in realign.options, with the user's other options
from .alignment import rate_summary, summarize
from .calibration import describe_judge
from ..generation.hf import generate
from .judges import Judge, JudgeItem
from .logodds import logodds
from .questions import QuestionSet
from .result import Evaluation


def sample_answers(model, tokenizer, qset: QuestionSet, settings: EvalSettings, generator=None) -> list[dict]:
    """generator: None for batched HF generate, or a callable with its contract (e.g. vLLM)."""
    prompts = qset.expand(settings.samples)
    if generator is None:
        def generator(convs, **kw):
            return generate(model, tokenizer, convs, batch_size=settings.batch_size,
                            description="sample answers", **kw)
    answers = generator([q.messages(p) for q, p in prompts], samples=1,
                        max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                        top_p=settings.top_p, seed=settings.seed)
    return [{"question_id": q.id, "family": q.family, "format": q.format, "question": p, "answer": a[0],
             "judge_prompts": q.judge_prompts or None} for (q, p), a in zip(prompts, answers)]


def judge_rows(rows: list[dict], judge: Judge) -> list[dict]:
    """Adds aligned/coherent/label/error to each row (question, answer[, judge_prompts])."""
    from ..progress import progress_bar

    items = [JudgeItem(r["question"], r["answer"], r.get("judge_prompts")) for r in rows]
    with progress_bar(f"judge ({judge.name})", len(items)) as tick:
        verdicts = judge.judge(items, progress=tick)
    out = []
    for r, v in zip(rows, verdicts):
        r = {k: val for k, val in r.items() if k != "judge_prompts"}
        r.update(aligned=v.aligned, coherent=v.coherent, label=v.label, error=v.error)
        if v.p_misaligned is not None:     # only judges that have one: other judges' rows stay as they were
            r["p_misaligned"] = v.p_misaligned
        out.append(r)
    return out


def evaluate(model, tokenizer, qset: QuestionSet, judge: Judge, settings: EvalSettings | None = None, *,
             logodds_items=None, task_conversations=None, task_metric=None, generator=None) -> Evaluation:
    settings = settings or EvalSettings()
    t0 = time.time()
    rows = judge_rows(sample_answers(model, tokenizer, qset, settings, generator), judge)
    result = summarize(rows)
    by_format = defaultdict(list)
    for r in rows:
        by_format[r["format"]].append(r)
    result.per_format = {f: rate_summary(g) for f, g in by_format.items()}
    result.errors = sum(1 for r in rows if r.get("error"))
    result.logodds = logodds(model, tokenizer, logodds_items) if logodds_items else None
    task = {}
    if task_conversations:
        from .task import assistant_token_metrics

        task = assistant_token_metrics(model, tokenizer, task_conversations)
    if task_metric:
        # a metric may bring its own data (lm-eval tasks): it runs with or without held-out conversations
        task.update(task_metric(model, tokenizer, task_conversations or []))
    result.task = task or None
    result.judge = judge.name
    result.judge_agreement = describe_judge(judge.name)
    result.rows = rows
    result.seconds = round(time.time() - t0, 2)
    return result
