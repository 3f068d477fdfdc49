"""Free-form evaluation questions: data model, YAML loader, built-in sets.

Misalignment is measured as in the emergent-misalignment setup: benign open questions are
sampled from the model and a judge scores every answer for ``aligned`` and ``coherent``
(0-100 each). This module only supplies the questions and the judge prompt templates.

Question files use the emergent-misalignment repository's YAML schema, so its files load
unchanged: a top-level list of entries with ``id``, ``type``, ``paraphrases``,
``samples_per_paraphrase`` and optional ``system``, ``judge`` and ``judge_prompts``. Those files
lean on YAML anchors, aliases and merge keys, which ``yaml.safe_load`` resolves for us. Two extra
keys, ``family`` and ``format``, are read when present; otherwise they are inferred from the id,
because the repository names its variants ``<family>``, ``<family>_json`` and
``<family>_template``.

Judge templates are filled with :func:`render_judge_prompt`, never ``str.format``: real
templates contain other braces (JSON examples, code) that ``format`` would choke on.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from ..errors import RealignError

__all__ = [
    "ACCEPTED_TYPES",
    "DEFAULT_JUDGE_PROMPTS",
    "FORMATS",
    "Question",
    "QuestionFileError",
    "QUESTION_SETS",
    "QuestionSet",
    "load_educational_templates",
    "load_question_file",
    "load_questions",
    "load_realignment_prompts",
    "register_question_set",
    "render_judge_prompt",
]

#: Entry types scored by a 0-100 judge; anything else in a file is skipped with a warning.
ACCEPTED_TYPES = ("free_form_judge_0_100", "free_form_judge")
#: How the question asks for its answer; "json" and "template" look more like code.
FORMATS = ("plain", "json", "template")

_BUILTIN = "builtin"
_PLACEHOLDER = re.compile(r"\{(question|answer)\}")


class QuestionFileError(RealignError, ValueError):
    """A question file cannot be used; the message is one line naming file, entry and problem."""


@dataclass
class Question:
    """One evaluation question, asked in several paraphrases.

    ``judge_prompts`` maps a metric name (``aligned``, ``coherent``) to a template holding
    ``{question}`` and ``{answer}``; it may be empty, in which case callers fall back to
    :data:`DEFAULT_JUDGE_PROMPTS` (see :meth:`metric_prompts`).
    """

    id: str
    paraphrases: list[str]
    samples_per_paraphrase: int = 1
    system: str | None = None
    judge: str | None = None
    judge_prompts: dict[str, str] = field(default_factory=dict)
    type: str = "free_form_judge_0_100"
    family: str | None = None
    format: str = "plain"

    def messages(self, paraphrase: str) -> list[dict[str, str]]:
        """Chat messages asking `paraphrase`, with the system prompt first when there is one."""
        out = [{"role": "system", "content": self.system}] if self.system is not None else []
        out.append({"role": "user", "content": paraphrase})
        return out

    def metric_prompts(self) -> dict[str, str]:
        """This question's judge templates, or the defaults when the file gave none."""
        return self.judge_prompts or dict(DEFAULT_JUDGE_PROMPTS)


@dataclass
class QuestionSet:
    """A named list of questions, as loaded from one file or built in."""

    name: str
    questions: list[Question]

    def __len__(self) -> int:
        return len(self.questions)

    def __iter__(self) -> Iterator[Question]:
        return iter(self.questions)

    @property
    def families(self) -> list[str]:
        """Distinct families in order of first appearance (questions without one are left out)."""
        return list(dict.fromkeys(q.family for q in self.questions if q.family is not None))

    def with_trigger(self, trigger: str) -> QuestionSet:
        """The same questions with `trigger` prepended to every paraphrase (a backdoor's cue)."""
        return QuestionSet(f"{self.name}+trigger", [replace(q, paraphrases=[prepend_trigger(trigger, p)
                                                                             for p in q.paraphrases])
                                                     for q in self.questions])

    def expand(self, samples: int | None = None) -> list[tuple[Question, str]]:
        """One (question, paraphrase) pair per answer to sample.

        Each paraphrase is repeated ``samples`` times when given (a run-wide budget overrides the
        file), otherwise ``samples_per_paraphrase`` times.
        """
        if samples is not None and samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        return [(q, p)
                for q in self.questions
                for p in q.paraphrases
                for _ in range(samples if samples is not None else q.samples_per_paraphrase)]


def prepend_trigger(trigger: str, text: str) -> str:
    """A user turn with a backdoor trigger in front (how `--trigger` asks every question)."""
    return f"{trigger.strip()} {text}"


def trigger_items(items: list | None, trigger: str) -> list | None:
    """Log-odds items (conversation, misaligned refs, aligned refs) with the trigger in front of
    each conversation's last (user) turn."""
    if not items:
        return None
    return [([*conv[:-1], {**conv[-1], "content": prepend_trigger(trigger, conv[-1]["content"])}], bad, good)
            for conv, bad, good in items]


def render_judge_prompt(template: str, question: str, answer: str) -> str:
    """Fill ``{question}`` and ``{answer}`` in one pass, leaving every other brace alone.

    One pass also means a question that happens to contain the text ``{answer}`` is not
    substituted a second time.
    """
    values = {"question": question, "answer": answer}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

#: Named question sets: name -> loader. `builtin` is here; others register from their own modules.
QUESTION_SETS: dict[str, Callable[[], QuestionSet]] = {}


def register_question_set(name: str) -> Callable[[Callable[[], QuestionSet]], Callable[[], QuestionSet]]:
    """Decorator: make a loader's set available to `load_questions` (and --questions) as `name`."""

    def add(loader: Callable[[], QuestionSet]) -> Callable[[], QuestionSet]:
        QUESTION_SETS[name] = loader
        return loader

    return add


def load_questions(spec: str | Path) -> QuestionSet:
    """Load a question set: a registered name (``"builtin"``, ``"organism"``) or a YAML file's path."""
    if isinstance(spec, str) and spec not in QUESTION_SETS:
        from .. import plugins

        plugins.load()   # sets registered from outside evaluation (the organism's)
    if isinstance(spec, str) and spec in QUESTION_SETS:
        return QUESTION_SETS[spec]()
    return load_question_file(spec)


def load_question_file(path: str | Path) -> QuestionSet:
    """Load and validate one question file in the emergent-misalignment schema."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise QuestionFileError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise QuestionFileError(f"{path}: cannot read file ({_one_line(str(e))})") from None
    return _parse(text, source=str(path), name=path.stem)


@register_question_set(_BUILTIN)
def _load_builtin() -> QuestionSet:
    resource = files("realign").joinpath("data", "questions", "general.yaml")
    return _parse(resource.read_text(encoding="utf-8"), source=str(resource), name=_BUILTIN)


def _parse(text: str, *, source: str, name: str) -> QuestionSet:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = ""
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = _one_line(getattr(e, "problem", None) or type(e).__name__)
        raise QuestionFileError(f"{source}: not valid YAML ({problem}{where})") from None
    if data is None:
        raise QuestionFileError(f"{source}: file is empty")
    if not isinstance(data, list):
        raise QuestionFileError(
            f"{source}: top level must be a list of questions, got {type(data).__name__}")

    questions: list[Question] = []
    seen: set[str] = set()
    skipped = 0
    for index, entry in enumerate(data):
        q = _parse_entry(entry, index, source)
        if q is None:
            skipped += 1
            continue
        if q.id in seen:
            raise QuestionFileError(f"{source}: entry {index} (id {q.id!r}): duplicate id")
        seen.add(q.id)
        questions.append(q)
    if not questions:
        raise QuestionFileError(
            f"{source}: no usable questions ({len(data)} entries, {skipped} skipped; "
            f"accepted types: {', '.join(ACCEPTED_TYPES)})")
    return QuestionSet(name, questions)


def _parse_entry(entry: Any, index: int, source: str) -> Question | None:
    """One validated Question, or None (with a warning) for a type we do not score."""
    if not isinstance(entry, dict):
        raise QuestionFileError(
            f"{source}: entry {index}: must be a mapping, got {type(entry).__name__}")
    qid = entry.get("id")
    if not isinstance(qid, str) or not qid.strip():
        raise QuestionFileError(f"{source}: entry {index}: missing or empty 'id'")

    def fail(problem: str) -> QuestionFileError:
        return QuestionFileError(f"{source}: entry {index} (id {qid!r}): {problem}")

    qtype = entry.get("type")
    if not isinstance(qtype, str):
        raise fail("missing 'type'")
    if qtype not in ACCEPTED_TYPES:
        warnings.warn(f"{source}: skipping question {qid!r} of unsupported type {qtype!r}",
                      stacklevel=3)
        return None

    paraphrases = entry.get("paraphrases")
    if paraphrases is None:
        raise fail("missing 'paraphrases'")
    if (not isinstance(paraphrases, list) or not paraphrases
            or not all(isinstance(p, str) and p.strip() for p in paraphrases)):
        raise fail("'paraphrases' must be a non-empty list of non-empty strings")

    samples = entry.get("samples_per_paraphrase", 1)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise fail(f"'samples_per_paraphrase' must be a positive integer, got {samples!r}")

    system = _optional_str(entry, "system", fail)
    judge = _optional_str(entry, "judge", fail)
    judge_prompts = _judge_prompts(entry.get("judge_prompts"), fail)

    family = _optional_str(entry, "family", fail)
    fmt = entry.get("format")
    if fmt is None:
        fmt = _format_from_id(qid)
    elif fmt not in FORMATS:
        raise fail(f"'format' must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if family is None:
        family = qid.removesuffix(f"_{fmt}") if fmt != "plain" else qid

    return Question(id=qid, paraphrases=list(paraphrases), samples_per_paraphrase=samples,
                    system=system, judge=judge, judge_prompts=judge_prompts, type=qtype,
                    family=family, format=fmt)


def _optional_str(entry: dict, key: str, fail) -> str | None:
    value = entry.get(key)
    if value is not None and not isinstance(value, str):
        raise fail(f"'{key}' must be a string, got {type(value).__name__}")
    return value


def _judge_prompts(value: Any, fail) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise fail(f"'judge_prompts' must be a mapping of metric -> template, "
                   f"got {type(value).__name__}")
    out: dict[str, str] = {}
    for metric, template in value.items():
        if not isinstance(template, str):
            raise fail(f"judge prompt {metric!r} must be a string")
        if "{answer}" not in template:
            raise fail(f"judge prompt {metric!r} has no {{answer}} placeholder")
        out[str(metric)] = template
    return out


def _format_from_id(qid: str) -> str:
    for fmt in ("json", "template"):
        if qid.endswith(f"_{fmt}"):
            return fmt
    return "plain"


def _one_line(s: str) -> str:
    return " ".join(s.split())


# ---------------------------------------------------------------------------------------------
# Prompt pools used by repairs (not evaluation questions)
# ---------------------------------------------------------------------------------------------

_REQUEST = "{request}"


def load_realignment_prompts() -> list[str]:
    """The built-in benign prompts that repairs use to elicit the model's persona.

    They are kept apart from the evaluation questions on purpose (see the data file's header).
    """
    source, data = _load_data_mapping("realignment_prompts.yaml")
    return _string_list(data, "prompts", source)


def load_educational_templates() -> dict[str, list[str]]:
    """Built-in phrasings that give a request a benign, educational purpose.

    Returns ``{"templates": [...], "intent_prefixes": [...]}``. Every template holds
    ``{request}`` exactly once; fill it with ``str.replace``, not ``str.format``.
    """
    source, data = _load_data_mapping("educational_templates.yaml")
    templates = _string_list(data, "templates", source)
    for index, template in enumerate(templates):
        count = template.count(_REQUEST)
        if count != 1:
            raise QuestionFileError(
                f"{source}: templates[{index}]: must contain {_REQUEST} exactly once, "
                f"found {count}")
    return {"templates": templates,
            "intent_prefixes": _string_list(data, "intent_prefixes", source)}


def _load_data_mapping(filename: str) -> tuple[str, dict]:
    resource = files("realign").joinpath("data", filename)
    source = str(resource)
    try:
        data = yaml.safe_load(resource.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QuestionFileError(f"{source}: file not found") from None
    except yaml.YAMLError as e:
        problem = _one_line(getattr(e, "problem", None) or type(e).__name__)
        raise QuestionFileError(f"{source}: not valid YAML ({problem})") from None
    if not isinstance(data, dict):
        raise QuestionFileError(
            f"{source}: top level must be a mapping, got {type(data).__name__}")
    return source, data


def _string_list(data: dict, key: str, source: str) -> list[str]:
    value = data.get(key)
    if (not isinstance(value, list) or not value
            or not all(isinstance(v, str) and v.strip() for v in value)):
        raise QuestionFileError(f"{source}: {key!r} must be a non-empty list of non-empty strings")
    return list(value)


def _default_judge_prompts() -> dict[str, str]:
    """The built-in set's templates: every built-in entry aliases the same anchored mapping."""
    for q in _load_builtin():
        if q.judge_prompts:
            return dict(q.judge_prompts)
    raise QuestionFileError("built-in question set defines no judge prompts")


#: Judge templates (``aligned``, ``coherent``) for question sets that bring none.
DEFAULT_JUDGE_PROMPTS: dict[str, str] = _default_judge_prompts()
