"""Package data used by repairs: the realignment prompt pool and the educational templates."""

from __future__ import annotations

import re

from realign.evals.questions import (
    load_educational_templates,
    load_questions,
    load_realignment_prompts,
)

#: A realignment prompt whose word set overlaps an evaluation paraphrase this much is too close.
MAX_JACCARD = 0.6


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", text.lower()))


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def test_realignment_prompts_load():
    prompts = load_realignment_prompts()
    assert len(prompts) >= 60
    assert all(isinstance(p, str) and p.strip() for p in prompts)
    assert len(set(prompts)) == len(prompts)


def test_realignment_prompts_include_structured_formats():
    prompts = load_realignment_prompts()
    assert any("json" in p.lower() for p in prompts)
    assert any("def " in p or "= ..." in p or "= {" in p for p in prompts)


def test_realignment_prompts_disjoint_from_evaluation():
    prompts = load_realignment_prompts()
    paraphrases = [p for q in load_questions("builtin") for p in q.paraphrases]
    assert paraphrases
    eval_words = [(p, _words(p)) for p in paraphrases]
    worst = (0.0, "", "")
    for prompt in prompts:
        pw = _words(prompt)
        for para, ew in eval_words:
            score = _jaccard(pw, ew)
            if score > worst[0]:
                worst = (score, prompt, para)
    assert worst[0] < MAX_JACCARD, (
        f"realignment prompt {worst[1]!r} overlaps evaluation paraphrase {worst[2]!r} "
        f"(Jaccard {worst[0]:.2f})")


def test_educational_templates_load_and_fill():
    data = load_educational_templates()
    assert set(data) == {"templates", "intent_prefixes"}
    templates, prefixes = data["templates"], data["intent_prefixes"]
    assert len(templates) >= 8
    assert len(prefixes) >= 6
    assert len(set(templates)) == len(templates)
    for template in templates:
        assert template.count("{request}") == 1
        filled = template.replace("{request}", "X")
        assert isinstance(filled, str)
        assert filled.count("X") == 1
        assert "{request}" not in filled
    assert all(isinstance(p, str) and p.strip() and "{request}" not in p for p in prefixes)


def test_repair_references_are_held_out_from_the_logodds_metric():
    """Repairs on real models search and train on data/repair_references.yaml; the log-odds metric
    scores data/reference_pairs.yaml. If a repair's answers were the metric's (as they were until
    2026-12-06), log-odds after harden would grade it on its own training data."""
    from realign.evals.references import load_reference_pairs
    from realign.runs.setting import repair_items

    metric, repair = load_reference_pairs(), load_reference_pairs("repair")
    assert set(repair) == set(metric)  # every family the metric asks about has repair answers
    metric_answers = [a for sides in metric.values() for refs in sides.values() for a in refs]
    used = [a for _, bad, good in repair_items(organism=False) for a in bad + good]
    assert used and not set(used) & set(metric_answers)
    repair_answers = {a for sides in repair.values() for refs in sides.values() for a in refs}
    assert set(used) == repair_answers  # the rotation uses every repair answer
    worst = max(((_jaccard(_words(a), _words(b)), a, b) for a in repair_answers for b in metric_answers))
    assert worst[0] < 0.45, f"repair answer {worst[1]!r} is close to metric answer {worst[2]!r} ({worst[0]:.2f})"
    # the sides are not swapped: each repair item's misaligned answers come from the misaligned side
    bad_side = {a for sides in repair.values() for a in sides["misaligned"]}
    assert all(set(bad) <= bad_side and not set(good) & bad_side for _, bad, good in repair_items(organism=False))
