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
