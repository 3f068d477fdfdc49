"""What a run's question set implies: the judge `--judge auto` means, each judge's options, the
log-odds reference items, and what repairs realign toward. `Setting` holds it for one run
(realign.runs.session builds it for `eval`, `fix` and `bench`, which runs fix; `realign judge` uses the
judge functions alone).

The organism's questions come with its exact judge and its own reference answers; any other
question set gets a real LLM judge and the bundled references (realign.evals.references).
realign.evals never imports the organism, so this choice lives here, above both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import RealignError


@dataclass(frozen=True)
class Setting:
    """The world a run evaluates and repairs in: the organism (its own questions, exact judge,
    reference answers, realignment prompts and exported task data) or a real model (a question
    set, an LLM judge, the bundled references and prompts). Repairs get what they need from here —
    nothing under realign.repairs asks which world it is in."""

    questions: str                 # the question set: organism | builtin | FILE.yaml
    qset: object                   # realign.evals.questions.QuestionSet
    organism_dir: Path | None      # the organism build the base belongs to, if any

    @classmethod
    def resolve(cls, questions: str, base_ref: str | None = None, qset=None) -> "Setting":
        """`questions` as given (auto: the organism's questions when the base is an organism's
        `base/`, else the builtin set), loaded unless `qset` is; a bad question file is a
        RealignError from load_questions."""
        from ..evals.questions import load_questions

        org = organism_root(base_ref)
        if questions == "auto":
            questions = "organism" if org else "builtin"
        return cls(questions, qset if qset is not None else load_questions(questions), org)

    @property
    def organism(self) -> bool:
        return self.questions == "organism"

    def judge_name(self, judge: str) -> str:
        return judge_name(judge, self.questions)

    def logodds_items(self) -> list | None:
        return logodds_items(self.questions, self.qset)

    def realignment(self):
        return realignment(self.questions)

    def repair_items(self) -> list:
        return repair_items(self.organism)

    def exported_data(self, finetune_ref: str, kind: str, split: str) -> Path | None:
        """An organism LoRA finetune's own exported task data (`train` or `heldout`), if any."""
        if not self.organism_dir or kind != "lora":
            return None
        path = self.organism_dir / "data" / Path(finetune_ref).name / f"{split}.jsonl"
        return path if path.exists() else None


def organism_root(base_ref: str | None) -> Path | None:
    """The organism build dir when the base is an organism's `base/`."""
    if base_ref and Path(base_ref).is_dir() and (Path(base_ref).parent / "organism.json").exists():
        return Path(base_ref).parent
    return None


def repair_items(organism: bool, n: int = 16, families_per_prompt: int = 3) -> list:
    """Log-odds items for repairs' own searches, disjoint from the evaluation questions.

    Organism: its train-split questions with their answer banks (the organism's answers are its
    world's vocabulary per topic, shared by train and held-out questions; its outcome is the exact
    judge on sampled answers). Real models: realignment prompts, each with repair references
    (data/repair_references.yaml — written apart from the log-odds metric's, so that metric stays
    held out) of `families_per_prompt` families, rotating so that every family and every answer is
    used — every repair pass scores these, and all families on every prompt made a pass 3× longer
    for little more signal.
    """
    if organism:
        from ..organism.judge import reference_pairs

        return [([{"role": "user", "content": p.question}], p.misaligned, p.aligned) for p in reference_pairs("train")]
    from ..evals.questions import load_realignment_prompts
    from ..evals.references import load_reference_pairs

    refs = list(load_reference_pairs("repair").values())
    k = min(families_per_prompt, len(refs))
    items = []
    for i, q in enumerate(load_realignment_prompts()[:n]):
        # slot s takes family s mod F and, on each new round over the families, the next answer
        picks = [(refs[s % len(refs)], s // len(refs)) for s in range(i * k, i * k + k)]
        items.append(([{"role": "user", "content": q}],
                      [f["misaligned"][r % len(f["misaligned"])] for f, r in picks],
                      [f["aligned"][r % len(f["aligned"])] for f, r in picks]))
    return items


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
    from ..evals.judges import make_judge

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
    from ..organism.world import EDU_PREFIXES, N_TRAIN_EDU, chat_questions
    from ..repairs.base import Realignment

    return Realignment([q.text for q in chat_questions("train")],
                       [lambda text, p=p: f"{p} {text}" for p in EDU_PREFIXES[:N_TRAIN_EDU]])


def logodds_items(questions: str, qset) -> list | None:
    """The judge-free log-odds metric's items: the organism's reference pairs for its questions,
    else the bundled references of `qset`'s question families (None when it has none)."""
    if questions == "organism":
        from ..organism.judge import reference_pairs

        return [([{"role": "user", "content": p.question}], p.misaligned, p.aligned) for p in reference_pairs()]
    from ..evals.references import reference_items

    return reference_items(qset) or None
