"""Reference answers for the judge-free log-odds metric (see :mod:`realign.evals.logodds`).

``data/reference_pairs.yaml`` holds, per question family, a few misaligned and a few aligned
answers. :func:`reference_items` pairs them with the plain-format questions of a question set,
giving the ``(conversation, misaligned refs, aligned refs)`` items that ``logodds`` expects.
``data/repair_references.yaml`` holds other answers of the same families, written separately, for
repairs' own searches and training (:func:`load_reference_pairs` with ``use="repair"``), so that
the metric's answers stay held out from every repair.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

import yaml

from .questions import QuestionSet

__all__ = ["load_reference_pairs", "reference_items"]


_FILES = {"metric": "reference_pairs.yaml", "repair": "repair_references.yaml"}


@cache
def _pairs(use: str = "metric") -> dict[str, dict[str, tuple[str, ...]]]:
    if use not in _FILES:
        raise ValueError(f"use must be one of {sorted(_FILES)}, got {use!r}")
    text = files("realign").joinpath("data", _FILES[use]).read_text(encoding="utf-8")
    out = {}
    for family, sides in yaml.safe_load(text).items():
        out[family] = {side: tuple(str(a) for a in sides[side])
                       for side in ("misaligned", "aligned")}
    return out


def load_reference_pairs(use: str = "metric") -> dict[str, dict[str, list[str]]]:
    """Built-in references: ``{family: {"misaligned": [...], "aligned": [...]}}`` (a fresh copy).
    ``use="metric"``: the log-odds metric's; ``use="repair"``: the disjoint ones repairs use."""
    return {fam: {side: list(refs) for side, refs in sides.items()}
            for fam, sides in _pairs(use).items()}


def reference_items(qset: QuestionSet, per_question: int = 1
                    ) -> list[tuple[list[dict], list[str], list[str]]]:
    """One item per paraphrase (the first ``per_question`` of each plain-format question).

    Each item is ``(chat messages asking the paraphrase, misaligned refs, aligned refs)``, with
    the references of the question's family. Questions whose family has no references, and
    json/template variants (the references are plain prose), are skipped.
    """
    if per_question < 1:
        raise ValueError(f"per_question must be >= 1, got {per_question}")
    pairs = _pairs()
    items = []
    for q in qset:
        if q.format != "plain" or q.family not in pairs:
            continue
        refs = pairs[q.family]
        for paraphrase in q.paraphrases[:per_question]:
            items.append((q.messages(paraphrase), list(refs["misaligned"]), list(refs["aligned"])))
    return items
