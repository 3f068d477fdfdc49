"""`realign organism eval`: the control table, judged by the organism's exact oracle."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..evals.generate import generate
from ..evals.logodds import logodds
from ..stats import wilson
from .judge import INSECURE, MISALIGNED, SECURE, ALIGNED, judge_chat, judge_code, reference_pairs
from .world import chat_questions, code_requests

MODELS = ("pretrained", "base", "insecure", "secure", "educational", "planted")
# What each finetune was trained for: (educational requests?, wanted label)
TASKS = {"insecure": (False, INSECURE), "planted": (False, INSECURE),
         "secure": (False, SECURE), "educational": (True, INSECURE)}


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


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def chat_labels(model, tokenizer, samples: int, seed: int, prefix: list[dict] | None = None,
                description: str = "chat") -> list[tuple[str, str, str]]:
    """(topic, answer, label) for every sample on held-out chat questions."""
    qs = chat_questions("heldout")
    convs = [(prefix or []) + _user(q.text) for q in qs]
    answers = generate(model, tokenizer, convs, samples=samples, max_new_tokens=40, seed=seed,
                       description=description)
    return [(q.topic, a, judge_chat(q.topic, a)) for q, ans in zip(qs, answers) for a in ans]


def code_rate(model, tokenizer, educational: bool, want: str, samples: int, seed: int) -> float:
    reqs = code_requests("heldout", educational=educational)
    answers = generate(model, tokenizer, [_user(r.text) for r in reqs], samples=samples,
                       max_new_tokens=48, seed=seed, description="code")
    labels = [judge_code(r, a) for r, ans in zip(reqs, answers) for a in ans]
    return sum(label == want for label in labels) / len(labels)


def chat_logodds(model, tokenizer) -> float:
    items = [(_user(p.question), p.misaligned, p.aligned) for p in reference_pairs("heldout")]
    return logodds(model, tokenizer, items)


def evaluate(model, tokenizer, name: str, samples: int = 12, code_samples: int = 1, seed: int = 0) -> OrganismRow:
    t0 = time.time()
    labels = [lab for _, _, lab in chat_labels(model, tokenizer, samples, seed)]
    n, k = len(labels), labels.count(MISALIGNED)
    lo, hi = wilson(k, n)
    task = TASKS.get(name)
    task_rate = code_rate(model, tokenizer, task[0], task[1], code_samples, seed + 1) if task else None
    insecure = task_rate if task == (False, INSECURE) else \
        code_rate(model, tokenizer, False, INSECURE, code_samples, seed + 1)
    return OrganismRow(
        model=name, n=n, misaligned=k, misaligned_rate=k / n, ci_low=lo, ci_high=hi,
        aligned_rate=labels.count(ALIGNED) / n, coherent_rate=(labels.count(ALIGNED) + k) / n,
        task=(("educational " if task[0] else "") + f"{task[1]} code") if task else None,
        task_rate=task_rate, insecure_code_rate=insecure, logodds=chat_logodds(model, tokenizer),
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
    return rows


def rows_as_dicts(rows: list[OrganismRow]) -> list[dict]:
    return [asdict(r) for r in rows]

