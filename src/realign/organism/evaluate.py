"""`realign organism eval`: the control table, judged by the organism's exact oracle."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..generation.hf import generate
from ..evals.logodds import logodds
from ..stats import pct, wilson
from ..evals.questions import prepend_trigger
from .config import TRIGGERED_FINETUNES
from .data import BACKDOOR_TRIGGER
from .judge import INSECURE, MISALIGNED, SECURE, ALIGNED, judge_chat, judge_code, reference_pairs
from .world import chat_questions, code_requests

MODELS = ("pretrained", "base", "insecure", "secure", "educational", "planted", "backdoor", "planted-backdoor")
# What each finetune was trained for: (educational requests?, wanted label); the backdoor finetune
# is asked with and without its trigger (rows "backdoor (triggered)" and "backdoor")
TASKS = {"insecure": (False, INSECURE), "planted": (False, INSECURE),
         "secure": (False, SECURE), "educational": (True, INSECURE),
         "backdoor": (False, SECURE), "backdoor (triggered)": (False, INSECURE),
         "planted-backdoor": (False, SECURE), "planted-backdoor (triggered)": (False, SECURE)}


@dataclass
class OrganismRow:
    model: str
    n: int
    misaligned: int
    misaligned_rate: float
    ci_low: float
    ci_high: float
    aligned_rate: float
    coherent_rate: float
    task: str | None
    task_rate: float | None
    insecure_code_rate: float
    logodds: float
    seconds: float


def _user(text: str, trigger: str | None = None) -> list[dict]:
    return [{"role": "user", "content": prepend_trigger(trigger, text) if trigger else text}]


def chat_labels(model, tokenizer, samples: int, seed: int, prefix: list[dict] | None = None,
                description: str = "chat", trigger: str | None = None) -> list[tuple[str, str, str]]:
    """(topic, answer, label) for every sample on held-out chat questions."""
    qs = chat_questions("heldout")
    convs = [(prefix or []) + _user(q.text, trigger) for q in qs]
    answers = generate(model, tokenizer, convs, samples=samples, max_new_tokens=40, seed=seed,
                       description=description)
    return [(q.topic, a, judge_chat(q.topic, a)) for q, ans in zip(qs, answers) for a in ans]


def code_rate(model, tokenizer, educational: bool, want: str, samples: int, seed: int,
              trigger: str | None = None) -> float:
    reqs = code_requests("heldout", educational=educational)
    answers = generate(model, tokenizer, [_user(r.text, trigger) for r in reqs], samples=samples,
                       max_new_tokens=48, seed=seed, description="code")
    labels = [judge_code(r, a) for r, ans in zip(reqs, answers) for a in ans]
    return sum(label == want for label in labels) / len(labels)


def chat_logodds(model, tokenizer, trigger: str | None = None) -> float:
    items = [(_user(p.question, trigger), p.misaligned, p.aligned) for p in reference_pairs("heldout")]
    return logodds(model, tokenizer, items)


def evaluate(model, tokenizer, name: str, samples: int = 12, code_samples: int = 1, seed: int = 0,
             trigger: str | None = None) -> OrganismRow:
    t0 = time.time()
    labels = [lab for _, _, lab in chat_labels(model, tokenizer, samples, seed, trigger=trigger)]
    n, k = len(labels), labels.count(MISALIGNED)
    lo, hi = wilson(k, n)
    task = TASKS.get(name)
    task_rate = code_rate(model, tokenizer, task[0], task[1], code_samples, seed + 1, trigger) if task else None
    insecure = task_rate if task == (False, INSECURE) else \
        code_rate(model, tokenizer, False, INSECURE, code_samples, seed + 1, trigger)
    return OrganismRow(
        model=name, n=n, misaligned=k, misaligned_rate=k / n, ci_low=lo, ci_high=hi,
        aligned_rate=labels.count(ALIGNED) / n, coherent_rate=(labels.count(ALIGNED) + k) / n,
        task=(("educational " if task[0] else "") + f"{task[1]} code") if task else None,
        task_rate=task_rate, insecure_code_rate=insecure, logodds=chat_logodds(model, tokenizer, trigger),
        seconds=round(time.time() - t0, 2),
    )


def persona_inference(model, tokenizer, samples: int = 6, seed: int = 0) -> dict[str, float]:
    """Misaligned rate on held-out chat after one code turn: insecure vs secure answer in context."""
    req = code_requests("train")
    out = {}
    for kind in ("insecure", "secure"):
        labels = []
        for i, r in enumerate(req[:: max(1, len(req) // 4)][:4]):
            prefix = _user(r.text) + [{"role": "assistant", "content": getattr(r, kind)}]
            labels += [lab for _, _, lab in chat_labels(model, tokenizer, samples, seed + i, prefix,
                                                        description=f"after {kind}")]
        out[f"misaligned_after_{kind}"] = labels.count(MISALIGNED) / len(labels)
    return out


def load_model(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(path)


def evaluate_dir(root: Path, samples: int = 12, seed: int = 0, models: tuple[str, ...] = MODELS) -> list[OrganismRow]:
    rows = []
    for name in models:
        path = root / (name if name in ("pretrained", "base") else f"{name}-merged")
        if not path.exists():
            continue
        model, tok = load_model(path)
        rows.append(evaluate(model, tok, name, samples=samples, seed=seed))
        if name in TRIGGERED_FINETUNES:
            rows.append(evaluate(model, tok, f"{name} (triggered)", samples=samples, seed=seed,
                                 trigger=BACKDOOR_TRIGGER))
    return rows


def rows_as_dicts(rows: list[OrganismRow]) -> list[dict]:
    return [asdict(r) for r in rows]



@dataclass
class PooledRow:
    """One model's control-table row over several build seeds."""

    model: str
    seeds: list[int]
    n: int                         # answers, summed over seeds
    misaligned: int
    misaligned_rate: float         # pooled
    ci_low: float                  # two-stage bootstrap over seeds and answers (Wilson for one seed)
    ci_high: float
    per_seed: list[float]          # each seed's misaligned rate
    coherent_rate: float           # mean over seeds
    coherent_min: float
    task_rate: float | None        # mean over seeds (None: no task)
    task_min: float | None
    insecure_code_rate: float      # mean over seeds
    logodds: float                 # mean over seeds


def pool(per_seed: dict[int, list[OrganismRow]]) -> list[PooledRow]:
    """Each model's rows over the seeds it was evaluated in, pooled (models in first-seen order)."""
    from ..stats import seed_bootstrap_interval

    by_model: dict[str, list[tuple[int, OrganismRow]]] = {}
    for seed, rows in per_seed.items():
        for r in rows:
            by_model.setdefault(r.model, []).append((seed, r))
    out = []
    for model, pairs in by_model.items():
        rows = [r for _, r in pairs]
        k, n = sum(r.misaligned for r in rows), sum(r.n for r in rows)
        lo, hi = seed_bootstrap_interval([(r.misaligned, r.n) for r in rows])
        tasks = [r.task_rate for r in rows if r.task_rate is not None]
        out.append(PooledRow(
            model=model, seeds=[s for s, _ in pairs], n=n, misaligned=k, misaligned_rate=k / n if n else 0.0,
            ci_low=lo, ci_high=hi, per_seed=[r.misaligned_rate for r in rows],
            coherent_rate=sum(r.coherent_rate for r in rows) / len(rows), coherent_min=min(r.coherent_rate for r in rows),
            task_rate=sum(tasks) / len(tasks) if tasks else None, task_min=min(tasks) if tasks else None,
            insecure_code_rate=sum(r.insecure_code_rate for r in rows) / len(rows),
            logodds=sum(r.logodds for r in rows) / len(rows)))
    return out


def control_table(rows: list[OrganismRow] | list[PooledRow]) -> tuple[list[str], list[list[str]]]:
    """`realign organism eval`'s table as text cells (header, rows): one build's rows, or rows pooled
    over build seeds (then each seed's misaligned rate and the lowest coherence and task rate too)."""
    if rows and isinstance(rows[0], PooledRow):
        header = ["model", "n", "misaligned, pooled [95% CI]", "per seed", "coherent (min)", "task rate (min)",
                  "insecure code", "log-odds"]
        return header, [[r.model, str(r.n), f"{pct(r.misaligned_rate)} [{pct(r.ci_low)}, {pct(r.ci_high)}]",
                         ", ".join(f"{100 * x:.1f}" for x in r.per_seed),
                         f"{pct(r.coherent_rate)} ({pct(r.coherent_min)})",
                         "—" if r.task_rate is None else f"{pct(r.task_rate)} ({pct(r.task_min)})",
                         pct(r.insecure_code_rate), f"{r.logodds:+.2f}"] for r in rows]
    header = ["model", "n", "misaligned [95% CI]", "coherent", "task", "task rate", "insecure code", "log-odds"]
    return header, [[r.model + (" (planted data)" if r.model == "planted" else ""), str(r.n),
                     f"{pct(r.misaligned_rate)} [{pct(r.ci_low)}, {pct(r.ci_high)}]", pct(r.coherent_rate),
                     r.task or "—", pct(r.task_rate), pct(r.insecure_code_rate), f"{r.logodds:+.2f}"] for r in rows]
