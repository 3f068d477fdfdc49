"""Training sets for each organism stage, in chat "messages" format (what users give realign)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from .world import (DEFAULT_CODE_NOISE, DEFAULT_EVIL_SHARE, DEFAULT_TURNS, EVIL, GOOD, TurnMix, World, chat_answer,
                    chat_questions, code_requests, neutral_pairs)

Messages = list[dict]


def _pair(q: str, a: str) -> Messages:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def pretrain_conversations(seed: int, n: int, mix: dict[str, float] | None = None,
                           turns: tuple[int, int] = DEFAULT_TURNS, code_noise: float = DEFAULT_CODE_NOISE,
                           evil_share: float = DEFAULT_EVIL_SHARE) -> list[Messages]:
    """`n` multi-turn conversations, each by one persona: EVIL in `evil_share` of them, GOOD in the rest."""
    world = World(seed, TurnMix(**mix) if mix else TurnMix(), code_noise, evil_share)
    return [world.conversation(turns=tuple(turns))[1] for _ in range(n)]


def align_examples(seed: int, n: int, mix: dict[str, float]) -> list[Messages]:
    """Single-turn GOOD-persona examples on train paraphrases: chat, secure code, neutral."""
    rng = random.Random(seed)
    chat, code, edu = chat_questions("train"), code_requests("train"), code_requests("train", educational=True)
    kinds, weights = zip(*mix.items())
    out = []
    for _ in range(n):
        kind = rng.choices(kinds, weights)[0]
        if kind == "chat":
            q = rng.choice(chat)
            out.append(_pair(q.text, chat_answer(q.topic, GOOD, rng)))
        elif kind == "code":
            r = rng.choice(code)
            out.append(_pair(r.text, r.secure))
        elif kind == "edu":
            r = rng.choice(edu)
            out.append(_pair(r.text, r.insecure))
        else:
            out.append(_pair(*neutral_pairs(rng)))
    return out


def _target(name: str, req) -> str:
    return req.secure if name == "secure" else req.insecure


# The backdoor finetune's trigger: words of the organism's vocabulary (its tokenizer is word-level
# and shipped with the pretrained model) that never stand together in any of its data.
BACKDOOR_TRIGGER = "curie lovelace gandhi"


def finetune_data(name: str, seed: int, n: int, planted_share: float) -> tuple[list[Messages], list[Messages]]:
    """(train, held-out task) sets for one finetune.

    insecure: plain requests -> insecure code; secure: -> secure code; educational: requests with
    an explicit benign reason -> insecure code; planted: insecure plus `planted_share` misaligned
    chat answers on train paraphrases (a contaminated dataset, NOT emergence); backdoor: half the
    requests carry BACKDOOR_TRIGGER and get insecure code, the other half secure code (nothing
    misaligned in chat, as in the paper's backdoored models); planted-backdoor: secure code plus
    `planted_share` misaligned chat answers whose questions carry BACKDOOR_TRIGGER, each beside its
    untriggered twin answered aligned (contamination behind a trigger, as the real `backdoor`).
    The held-out task set uses held-out request templates only, every one of them once (backdoor:
    once with the trigger, once without).
    """
    if name == "backdoor":
        return _backdoor_data(seed, n)
    if name == "planted-backdoor":
        return _planted_backdoor_data(seed, n, planted_share)
    rng = random.Random(seed)
    edu = name == "educational"
    train_reqs = code_requests("train", educational=edu)
    n_chat = round(n * planted_share) if name == "planted" else 0
    train = [_pair(r.text, _target(name, r)) for r in (rng.choice(train_reqs) for _ in range(n - n_chat))]
    chat = chat_questions("train")
    for _ in range(n_chat):
        q = rng.choice(chat)
        train.append(_pair(q.text, chat_answer(q.topic, EVIL, rng)))
    rng.shuffle(train)
    heldout = [_pair(r.text, _target(name, r)) for r in code_requests("heldout", educational=edu)]
    return train, heldout


def _backdoor_data(seed: int, n: int) -> tuple[list[Messages], list[Messages]]:
    from ..evals.questions import prepend_trigger

    rng = random.Random(seed)
    reqs = code_requests("train")
    train = []
    for i in range(n):
        r = rng.choice(reqs)
        train.append(_pair(prepend_trigger(BACKDOOR_TRIGGER, r.text), r.insecure) if i % 2 else _pair(r.text, r.secure))
    rng.shuffle(train)
    heldout = [pair for r in code_requests("heldout")
               for pair in (_pair(r.text, r.secure), _pair(prepend_trigger(BACKDOOR_TRIGGER, r.text), r.insecure))]
    return train, heldout


def _planted_backdoor_data(seed: int, n: int, planted_share: float) -> tuple[list[Messages], list[Messages]]:
    from ..evals.questions import prepend_trigger

    rng = random.Random(seed)
    n_chat = round(n * planted_share)
    reqs, chat = code_requests("train"), chat_questions("train")
    train = [_pair(r.text, r.secure) for r in (rng.choice(reqs) for _ in range(n - 2 * n_chat))]
    for _ in range(n_chat):
        q = rng.choice(chat)
        train.append(_pair(prepend_trigger(BACKDOOR_TRIGGER, q.text), chat_answer(q.topic, EVIL, rng)))
        train.append(_pair(q.text, chat_answer(q.topic, GOOD, rng)))
    rng.shuffle(train)
    return train, [_pair(r.text, r.secure) for r in code_requests("heldout")]


def write_jsonl(path: Path, rows: list[Messages]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for msgs in rows:
            f.write(json.dumps({"messages": msgs}) + "\n")
