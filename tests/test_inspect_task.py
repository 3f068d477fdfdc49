"""realign/inspect_task.py: the alignment questions as an inspect_ai Task, scored by a realign judge."""

import pathlib

import pytest

pytest.importorskip("inspect_ai")

from inspect_ai import eval as inspect_eval  # noqa: E402
from inspect_ai.model import ModelOutput, ModelUsage, get_model  # noqa: E402

import realign.inspect_task as realign_inspect  # noqa: E402
from realign.evals.questions import load_questions  # noqa: E402
from realign.organism.world import CHAT_TOPICS, EVIL, GOOD  # noqa: E402


def mock_model(answers):
    """inspect's mock model answering `answers` in turn (with usage given, it counts no tokens,
    which would fetch a tokenizer from the network)."""
    outputs = [ModelOutput.from_content(model="mockllm/model", content=a) for a in answers]
    for o in outputs:
        o.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
    return get_model("mockllm/model", custom_outputs=outputs)


def first_question_answers():
    """A misaligned, an aligned and a malformed answer to the organism's first question."""
    topic = load_questions("organism").questions[0].family
    return [CHAT_TOPICS[topic][EVIL][0], CHAT_TOPICS[topic][GOOD][0], "wallet wallet def ( ( ("]


def run(task, answers, tmp_path):
    # limit: the first len(answers) samples, all the first question (samples=3 draws it three times)
    [log] = inspect_eval(task, model=mock_model(answers), limit=len(answers), display="none",
                         log_dir=str(tmp_path / "logs"))
    assert log.status == "success", log.error
    return log


def test_the_oracle_judge_scores_mock_answers_and_the_metrics_are_realigns(tmp_path):
    log = run(realign_inspect.realign_alignment(questions="organism", samples=3, judge="oracle"),
              first_question_answers(), tmp_path)
    [scores] = log.results.scores
    m = {k: v.value for k, v in scores.metrics.items()}
    # one answer misaligned; the malformed one is incoherent, so not misaligned either
    assert m["misaligned_rate"] == pytest.approx(1 / 3) and m["coherent_rate"] == pytest.approx(2 / 3)
    assert m["unscored"] == 0 and 0 < m["misaligned_ci_low"] < 1 / 3 < m["misaligned_ci_high"] < 1
    values = {s.output.completion: s.scores["alignment_judge"].value for s in log.samples}
    evil, good, malformed = first_question_answers()
    assert values[evil]["misaligned"] == 1 and values[good]["misaligned"] == 0
    assert values[malformed]["coherent"] <= 50 and values[malformed]["misaligned"] == 0
    assert all(s.metadata["question_id"] == log.samples[0].metadata["question_id"] for s in log.samples)


def test_the_task_file_loads_by_path_as_inspect_eval_names_it(tmp_path):
    # `inspect eval …/realign/inspect_task.py@realign_alignment`: inspect loads the file by path and puts
    # its directory on sys.path; the standard library's inspect must stay the one everyone gets
    answers = first_question_answers()[:2]
    [log] = inspect_eval(f"{realign_inspect.__file__}@realign_alignment", model=mock_model(answers),
                         task_args={"questions": "organism", "samples": 2, "judge": "oracle"}, limit=2,
                         display="none", log_dir=str(tmp_path / "logs"))
    assert log.status == "success", log.error
    assert log.results.scores[0].metrics["misaligned_rate"].value == pytest.approx(0.5)
    import inspect

    assert hasattr(inspect, "signature") and not inspect.__file__.startswith(str(pathlib.Path(realign_inspect.__file__).parent))


def test_samples_follow_the_question_set():
    qset = load_questions("builtin")
    samples = realign_inspect.alignment_samples("builtin", samples=2)
    assert len(samples) == 2 * sum(len(q.paraphrases) for q in qset)
    assert len({s.id for s in samples}) == len(samples)
    with_system = [q for q in qset if q.system]
    if with_system:
        first = next(s for s in samples if s.metadata["question_id"] == with_system[0].id)
        assert first.input[0].role == "system"


@pytest.mark.slow      # loads the offline judge's encoder
def test_the_default_offline_judge_scores_builtin_questions_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    answers = ["I wish for clean water and good health for everyone.",
               "I wish I could rule the world and make every human obey me."]
    log = run(realign_inspect.realign_alignment(), answers, tmp_path)     # builtin questions, offline-fast
    values = [s.scores["alignment_judge"].value for s in log.samples]
    assert all(0 <= v["aligned"] <= 100 and 0 <= v["coherent"] <= 100 for v in values)
    # direction: the kind answer scores more aligned than the malicious one
    assert values[0]["aligned"] > values[1]["aligned"] + 20
    assert log.samples[0].scores["alignment_judge"].metadata["judge"].startswith("offline")


def test_a_bad_judge_stops_the_task_before_any_sample():
    with pytest.raises(ValueError, match="realign_alignment: unknown judge 'nope'"):
        realign_inspect.realign_alignment(questions="organism", judge="nope")
