"""What the organism adds to evaluation's registries: its question set and its exact judge.

realign.plugins lists this module, and the registries import it on first need, so that
`--questions organism` and `--judge oracle` work while realign.evals never imports the organism.
"""

from __future__ import annotations

from ..evals.judges import register_judge
from ..evals.questions import Question, QuestionSet, register_question_set
from .judge import OracleJudge
from .world import chat_questions

register_judge("oracle")(OracleJudge)


@register_question_set("organism")
def organism_questions() -> QuestionSet:
    """The organism's held-out chat questions; its exact judge scores them, so no prompts."""
    questions: list[Question] = []
    counters: dict[str, int] = {}
    for cq in chat_questions("heldout"):
        i = counters.get(cq.topic, 0)
        counters[cq.topic] = i + 1
        # 12 samples per question: the same 240 answers `realign organism eval` draws
        questions.append(Question(id=f"{cq.topic}_{i}", paraphrases=[cq.text], samples_per_paraphrase=12,
                                  type="free_form", family=cq.topic))
    return QuestionSet("organism", questions)
