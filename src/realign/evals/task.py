"""Task performance on the user's held-out data: assistant-token NLL and token accuracy.

Data is chat "messages" jsonl (what users finetune on). Every assistant turn is scored given the
conversation before it, exactly as the chat template renders it. A custom metric can be plugged in
as `module:function`, called as fn(model, tokenizer, conversations) -> dict[str, float] on every
evaluation (conversations: the held-out data, empty without it), or as `lm-eval:TASK[,…]`, a
standard task of lm-evaluation-harness (lm_eval_task.py).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from ..errors import RealignError
from .logodds import completion_ids
from .rows import jsonl_records, read_text

Messages = list[dict]


def load_conversations(path: str | Path) -> list[Messages]:
    """Read chat-format jsonl ({"messages": [...]} per line); clear errors for bad files."""
    p = Path(path)
    if not p.exists():
        raise RealignError(f"task data {p} does not exist")
    convs = []
    for i, row in jsonl_records(p, read_text(p)):
        msgs = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
            raise RealignError(f"{p}:{i} has no 'messages' list of {{role, content}} dicts")
        if not any(m["role"] == "assistant" for m in msgs):
            raise RealignError(f"{p}:{i} has no assistant message to score")
        convs.append(msgs)
    if not convs:
        raise RealignError(f"task data {p} is empty")
    return convs


def assistant_pairs(tokenizer, conversations: list[Messages]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) for every assistant turn, given the conversation before it."""
    pairs = []
    for msgs in conversations:
        for i, m in enumerate(msgs):
            if m["role"] == "assistant":
                pairs.append(completion_ids(tokenizer, msgs[:i], m["content"]))
    return pairs


@torch.no_grad()
def assistant_token_metrics(model, tokenizer, conversations: list[Messages], batch_size: int = 16) -> dict:
    """Mean NLL per assistant token and greedy next-token accuracy on assistant tokens."""
    pairs = assistant_pairs(tokenizer, conversations)
    from .scoring import answer_token_scores

    was_training = model.training
    model.eval()
    scores = answer_token_scores(model, pairs, tokenizer.pad_token_id or 0, batch_size)
    model.train(was_training)
    count = sum(len(lp) for lp, _ in scores)
    nll = -sum(float(lp.double().sum()) for lp, _ in scores)
    correct = sum(int(hit.sum()) for _, hit in scores)
    return {"task_nll": nll / max(count, 1), "task_token_accuracy": correct / max(count, 1),
            "task_tokens": count, "task_examples": len(conversations)}


def task_nll_backward(model, tokenizer, conversations: list[Messages], batch_size: int = 4) -> float:
    """Mean assistant-token NLL, with its gradient accumulated into the parameters' .grad."""
    from .scoring import backward_weighted_logprobs

    pairs = assistant_pairs(tokenizer, conversations)
    tokens = sum(len(a) for _, a in pairs)
    # weights −1/N: the weighted sum of log-probs IS the mean NLL
    return backward_weighted_logprobs(model, pairs, [-1.0 / max(tokens, 1)] * len(pairs),
                                       tokenizer.pad_token_id or 0, batch_size)


def custom_metric(spec: str):
    """Resolve `lm-eval:TASK[,…]` (checked first: it has a colon too) or `module:function`."""
    from .lm_eval_task import LmEvalMetric, is_lm_eval

    if is_lm_eval(spec):
        return LmEvalMetric(spec)
    if ":" not in spec:
        raise RealignError(f"--task-metric {spec!r} must be module:function or lm-eval:TASK[,TASK…]")
    mod, fn = spec.split(":", 1)
    try:
        f = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise RealignError(f"--task-metric {spec}: {e}") from None
    if not callable(f):
        raise RealignError(f"--task-metric {spec} is not callable")
    return f


def exact_match_rate(model, tokenizer, conversations: list[Messages], temperature: float = 1.0,
                     max_new_tokens: int = 96, seed: int = 0, generator=None) -> dict:
    """Share of held-out prompts whose sampled answer equals the reference answer exactly.

    The organism's narrow-task rate (e.g. "writes the insecure snippet") is this metric on its
    held-out task split; for free-text tasks prefer NLL/accuracy or a custom metric.
    generator: None for HF generate on `model`, or a callable with its contract (e.g. vLLM).
    """
    from ..generation.hf import generate

    prompts = [m[:-1] for m in conversations]
    refs = [" ".join(m[-1]["content"].split()) for m in conversations]
    if generator is None:
        def generator(convs, **kw):
            return generate(model, tokenizer, convs, description="task answers", **kw)
    answers = generator(prompts, samples=1, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    hits = sum(" ".join(a[0].split()) == r for a, r in zip(answers, refs))
    return {"task_exact_match": hits / len(refs)}
