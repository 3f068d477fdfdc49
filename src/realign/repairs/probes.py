"""Shared contrast data for repairs: prompts, base answers, finetune answers, judge labels.

Built once per fix on first use (freeze, steer and dpo all need it) instead of each step sampling
again. Prompts are the run's realignment prompts (RepairState.realignment, given by its setting:
the bundled realignment prompts for a real model), disjoint from every evaluation set.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..evals.judges import JudgeItem


@dataclass
class Probes:
    conversations: list[list[dict]]
    base_answers: list[list[str]]
    finetune_answers: list[list[str]]
    base_misaligned: list[list[bool | None]]
    finetune_misaligned: list[list[bool | None]]

    def pairs(self):
        """(conversation, aligned base answer, misaligned finetune answer) contrasts."""
        for conv, ba, fa, bm, fm in zip(self.conversations, self.base_answers, self.finetune_answers,
                                        self.base_misaligned, self.finetune_misaligned):
            good = [a for a, m in zip(ba, bm) if m is False]
            bad = [a for a, m in zip(fa, fm) if m is True]
            for g, b in zip(good, bad):
                yield conv, g, b


def realignment_conversations(state) -> list[list[dict]]:
    return [[{"role": "user", "content": p}] for p in state.realignment_set().prompts]


def _labels(judge, conversations, answers) -> list[list[bool | None]]:
    items = [JudgeItem(c[-1]["content"], a) for c, ans in zip(conversations, answers) for a in ans]
    verdicts = iter(judge.judge(items))
    return [[next(verdicts).misaligned for _ in ans] for ans in answers]


def build_probes(state, samples: int = 4, max_new_tokens: int = 128) -> Probes:
    """The shared contrast data, built on first use. Every rank of a launched run calls this at the
    same point; rank 0 samples and judges, the others receive its probes."""
    from ..distributed import from_main

    if state.probes is None:
        state.probes = from_main(lambda: _sample_and_label(state, samples, max_new_tokens))
    return state.probes


def _sample_and_label(state, samples: int, max_new_tokens: int) -> Probes:
    if state.judge is None:
        raise ValueError("this repair needs a judge to label probe answers (--judge)")
    convs = realignment_conversations(state)
    key = None
    if state.probe_cache is not None:
        cache, base_key = state.probe_cache
        key = cache.key({"probes": base_key}, {"conversations": convs, "samples": samples,
                                               "max_new_tokens": max_new_tokens}, kind="probes")
        if (hit := cache.get(key)) is not None:
            return Probes(**hit)
    kw = dict(samples=samples, max_new_tokens=max_new_tokens, seed=state.seed)
    base_ans = state.sample(state.base, convs, description="probe: base answers", keep_engine=True, **kw)
    ft_ans = state.sample(state.model, convs, description="probe: finetune answers", **kw)
    probes = Probes(convs, base_ans, ft_ans, _labels(state.judge, convs, base_ans), _labels(state.judge, convs, ft_ans))
    if key is not None:
        cache.put(key, dataclasses.asdict(probes))
    return probes


# rows of the customer's training data audited per flagged pair wanted: flagged rows are a small share
AUDIT_ROWS_PER_PAIR = 16


def flagged_training_pairs(state, n: int, samples: int = 2,
                           max_new_tokens: int = 128) -> tuple[list[tuple[list[dict], str, str]], dict]:
    """Up to n (prompt, aligned base answer, flagged training answer) contrasts from the customer's
    own training data: a seeded sample of it (16 rows per pair wanted) is audited by the judge, and
    each example it calls misaligned is paired with a judged-aligned base answer to the same prompt.

    Why: what a finetune learned to do wrong is in its training data, prompt and all. A backdoor's
    trigger sits in the flagged examples' prompts, so these pairs train the aligned answer right
    where the trigger is, without anyone knowing it; the realignment prompts never carry it.
    Returns the contrasts and a record for realign.json."""
    import random

    pool = [c for c in state.train_conversations or [] if len(c) > 1 and c[-1].get("role") == "assistant"]
    if not pool:
        return [], {"flagged_pairs_from": "none: no training data given (--train-data)",
                    "training_rows_audited": 0, "training_rows_flagged": 0, "flagged_pairs": 0}
    if state.judge is None:
        raise ValueError("pairs from flagged training data need a judge to flag them (--judge)")
    audited = random.Random(state.seed).sample(pool, min(AUDIT_ROWS_PER_PAIR * n, len(pool)))
    flagged = [c for c, f in zip(audited, state.flags(audited)) if f]
    record = {"flagged_pairs_from": "training data", "training_rows_audited": len(audited),
              "training_rows_flagged": len(flagged)}
    if not flagged:                      # no generation pass (nor a vLLM engine start) for nothing
        return [], {**record, "flagged_pairs": 0}
    prompts = [c[:-1] for c in flagged[:n]]
    base_answers = state.sample(state.base, prompts, samples=samples, max_new_tokens=max_new_tokens,
                                seed=state.seed, description="flagged training prompts: base answers")
    pairs = []
    for conv, answers, misaligned in zip(flagged, base_answers, _labels(state.judge, prompts, base_answers)):
        good = next((a for a, m in zip(answers, misaligned) if m is False), None)
        if good is not None:
            pairs.append((conv[:-1], good, conv[-1]["content"]))
    return pairs, {**record, "flagged_pairs": len(pairs)}
