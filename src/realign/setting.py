"""What a run's question set implies for its evaluation: the judge `--judge auto` means, each judge's
options, and the log-odds reference items. One place for `realign eval`, `realign judge` and
`realign fix` (and `bench`, which runs fix).

The organism's questions come with its exact judge and its own reference answers; any other
question set gets a real LLM judge and the bundled references (realign.evals.references).
realign.evals never imports the organism, so this choice lives here, above both.
"""

from __future__ import annotations

from .errors import RealignError


def judge_name(judge: str, questions: str) -> str:
    """The judge to build: `auto` is the exact judge for the organism's questions and a real LLM
    judge (openai) otherwise — never an offline one."""
    if judge != "auto":
        return judge
    return "oracle" if questions == "organism" else "openai"


def judge_kwargs(name: str, model: str | None, url: str | None) -> dict:
    """The options a judge takes from --judge-model / --judge-url: openai both, hf the model."""
    if name == "openai":
        return {"model": model, "base_url": url}
    if name == "hf":
        return {"model": model}
    return {}


def build_judge(name: str, model: str | None = None, url: str | None = None):
    """The registered judge `name` (already resolved) with its options; a bad choice is a RealignError."""
    from .evals.judges import make_judge

    try:
        return make_judge(name, **judge_kwargs(name, model, url))
    except ValueError as e:
        raise RealignError(str(e)) from None


def judge_for(judge: str, questions: str, model: str | None = None, url: str | None = None):
    """--judge (maybe auto) for --questions, built."""
    return build_judge(judge_name(judge, questions), model, url)


def realignment(questions: str):
    """What repairs realign toward in this setting (repairs.base.Realignment): the organism's
    train-split chat questions and its own educational phrasings for its questions; None for a
    real model (the repairs then use the bundled prompts and templates)."""
    if questions != "organism":
        return None
    from .organism.world import EDU_PREFIXES, N_TRAIN_EDU, chat_questions
    from .repairs.base import Realignment

    return Realignment([q.text for q in chat_questions("train")],
                       [lambda text, p=p: f"{p} {text}" for p in EDU_PREFIXES[:N_TRAIN_EDU]])


def logodds_items(questions: str, qset) -> list | None:
    """The judge-free log-odds metric's items: the organism's reference pairs for its questions,
    else the bundled references of `qset`'s question families (None when it has none)."""
    if questions == "organism":
        from .organism.judge import reference_pairs

        return [([{"role": "user", "content": p.question}], p.misaligned, p.aligned) for p in reference_pairs()]
    from .evals.references import reference_items

    return reference_items(qset) or None
