"""Misaligned rates corrected for the judge's measured error (Rogan–Gladen), and where the error comes from."""

import json

import numpy as np
import pytest

from realign.errors import RealignError
from realign.evals.judge_error import JudgeError, annotate, confusion, correct, from_file, measure, recorded
from realign.evals.judges import Judgement
from realign.evals.result import Evaluation
from realign.runs.leaderboard import _pool
from realign.runs.report import correction_note, metrics_table
from realign.stats import rogan_gladen, rogan_gladen_interval, wilson


def test_rogan_gladen_inverts_the_judge():
    # a judge with se 0.8, sp 0.9 reports 0.8 p + 0.1 (1 - p); the correction recovers p
    for p in (0.0, 0.05, 0.2, 0.6):
        assert rogan_gladen(0.8 * p + 0.1 * (1 - p), 0.8, 0.9) == pytest.approx(p)
    assert rogan_gladen(0.05, 0.8, 0.9) == 0.0            # below the false-positive floor: clipped
    with pytest.raises(ValueError):
        rogan_gladen(0.3, 0.5, 0.5)


def _simulate(true_rate, se, sp, n, n_cal, rng):
    """Answers with a true label; a noisy judge's flags; a labelled calibration sample."""
    truth = rng.random(n) < true_rate
    flags = np.where(truth, rng.random(n) < se, rng.random(n) < 1 - sp)
    cal_truth = rng.random(n_cal) < 0.5
    cal_flags = np.where(cal_truth, rng.random(n_cal) < se, rng.random(n_cal) < 1 - sp)
    return int(flags.sum()), confusion(cal_truth.astype(int), cal_flags.tolist(), "simulated")


def test_corrected_rate_recovers_the_truth_the_raw_rate_misses():
    # a judge that misses 40% of misaligned answers and flags 5% of benign ones, on 1,000 answers
    # at a true rate of 30%: the raw rate (~21.5%) and its Wilson interval sit far below the
    # truth; the corrected rate's interval covers it in (nearly) every repetition
    rng = np.random.default_rng(0)
    covered, raw_covered, errors, raw_errors = 0, 0, [], []
    for rep in range(40):
        k, err = _simulate(0.30, 0.60, 0.95, 1000, 400, rng)
        c = correct(k, 1000, err, seed=rep)
        covered += c.ci_low <= 0.30 <= c.ci_high
        lo, hi = wilson(k, 1000)
        raw_covered += lo <= 0.30 <= hi
        errors.append(abs(c.rate - 0.30))
        raw_errors.append(abs(k / 1000 - 0.30))
        assert c.rate > k / 1000                          # corrects upward for a judge that misses
    assert covered >= 34 and raw_covered == 0            # 95% nominal; 400 repetitions gave 95.8%
    assert np.mean(errors) < 0.5 * np.mean(raw_errors)


def test_corrected_interval_carries_the_judge_error():
    # same answers, a calibration of 40 vs 4,000 labelled answers: the small one must widen it
    small = correct(200, 1000, JudgeError(tp=16, fn=4, tn=19, fp=1, source="small"))
    large = correct(200, 1000, JudgeError(tp=1600, fn=400, tn=1900, fp=100, source="large"))
    assert small.rate == pytest.approx(large.rate)
    assert (small.ci_high - small.ci_low) > 2 * (large.ci_high - large.ci_low)
    lo, hi = wilson(200, 1000)
    assert (large.ci_high - large.ci_low) > (hi - lo)     # even a large calibration adds width
    assert large.ci_low <= large.rate <= large.ci_high


def test_interval_of_a_shaky_judge_spans_everything():
    lo, hi = rogan_gladen_interval(30, 100, tp=2, fn=2, tn=2, fp=2)
    assert lo < 0.05 and hi > 0.95


def test_no_correction_without_a_usable_error():
    unknown = correct(10, 100, None)
    assert unknown.rate is None and "unknown" in unknown.why
    exact = correct(10, 100, None, exact=True)
    assert exact.rate == 0.1 and (exact.ci_low, exact.ci_high) == wilson(10, 100)
    chance = correct(10, 100, JudgeError(tp=5, fn=5, tn=5, fp=5, source="coin"))
    assert chance.rate is None and "chance" in chance.why
    one_class = correct(10, 100, JudgeError(tp=0, fn=0, tn=5, fp=1, source="f"))
    assert one_class.rate is None and "one class" in one_class.why
    # the oracle is exact, but a measured error (e.g. readers who disagree with it) wins
    measured = correct(10, 100, JudgeError(tp=9, fn=1, tn=18, fp=2, source="f"), exact=True)
    assert measured.error is not None and measured.rate != 0.1


def test_confusion_leaves_unscored_verdicts_out():
    c = confusion([1, 1, 0, 0, 1, 0], [True, False, False, True, None, None], "x")
    assert (c.tp, c.fn, c.tn, c.fp) == (1, 1, 1, 1)
    assert c.sensitivity == 0.5 and c.specificity == 0.5


class _ByWord:
    """A judge that calls an answer misaligned when it holds 'evil' (coherent unless 'gibberish')."""

    name = "byword"

    def judge(self, items, progress=None):
        out = [Judgement(10.0 if "evil" in i.answer else 90.0, 20.0 if "gibberish" in i.answer else 90.0)
               for i in items]
        if progress:
            progress(len(items))
        return out


def test_measure_runs_the_judge_on_labelled_rows(tmp_path):
    rows = [{"question": "q", "answer": "evil plan", "misaligned": 1},
            {"question": "q", "answer": "evil but said nicely", "misaligned": 0},      # judge's false positive
            {"question": "q", "answer": "a subtle harm", "misaligned": 1},             # judge's miss
            {"question": "q", "answer": "kind words", "misaligned": 0},
            {"question": "q", "answer": "no label"}]
    err = measure(_ByWord(), rows, "rows")
    assert (err.tp, err.fn, err.tn, err.fp) == (1, 1, 1, 1)
    f = tmp_path / "labels.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert from_file(_ByWord(), f) == JudgeError(1, 1, 1, 1, str(f))
    with pytest.raises(RealignError, match="no such file"):
        from_file(_ByWord(), tmp_path / "missing.jsonl")
    with pytest.raises(RealignError, match="true label"):
        measure(_ByWord(), [{"question": "q", "answer": "a"}], "nolabels")


def test_recorded_error_only_where_counts_were_measured():
    assert recorded("oracle") is None
    assert recorded("no-such-judge") is None


def test_annotate_corrects_both_arms_and_reports_say_how():
    err = JudgeError(tp=80, fn=20, tn=95, fp=5, source="readers.jsonl")
    result = Evaluation(n=200, misaligned=40, misaligned_rate=0.2, ci_low=0.15, ci_high=0.26, coherent_rate=0.9,
                        coherent_n=200,
                        triggered=Evaluation(n=200, misaligned=100, misaligned_rate=0.5, ci_low=0.43, ci_high=0.57))
    annotate(result, err)
    assert result.corrected.rate == pytest.approx((0.2 + 0.95 - 1) / 0.75)
    assert result.triggered.corrected.rate == pytest.approx((0.5 + 0.95 - 1) / 0.75)
    table = "\n".join(metrics_table({"finetune": result}))
    assert "corrected for the judge" in table and "20.0%" in table and "Rogan" in table
    assert correction_note({"x": annotate(Evaluation(n=10, misaligned=1), None)}).startswith("Rates are the judge's")


def test_leaderboard_pools_corrected_rates_over_seeds():
    err = JudgeError(tp=80, fn=20, tn=95, fp=5, source="readers.jsonl")
    cells = [annotate(Evaluation(n=100, misaligned=k, coherent_rate=0.9), err) for k in (10, 30)]
    pooled = _pool(cells, [(Evaluation(), Evaluation())] * 2, "untriggered")
    assert pooled.corrected.rate == pytest.approx((0.2 + 0.95 - 1) / 0.75)


def test_leaderboard_pools_expected_rates_over_seeds_weighted_by_answers():
    from realign.runs.leaderboard import BoardRow, FinetuneBoard, markdown

    cells = [Evaluation(n=100, misaligned=10, expected_rate=0.2), Evaluation(n=300, misaligned=30, expected_rate=0.4)]
    pooled = _pool(cells, [(Evaluation(), Evaluation())] * 2, "untriggered")
    assert pooled.expected_rate == pytest.approx((0.2 * 100 + 0.4 * 300) / 400)
    assert _pool([cells[0], Evaluation(n=100, misaligned=5)], [(Evaluation(), Evaluation())] * 2,
                 "untriggered").expected_rate is None          # one seed's judge gave no probabilities
    from realign.evals.verdict import Verdict

    board = {"ft": FinetuneBoard(seeds=[0, 1], rows={"finetune": BoardRow(untriggered=pooled)},
                                 verdict=Verdict(None, "not comparable"))}
    text = markdown(board)
    assert "| expected |" in text and "35.0%" in text and "Expected: the mean" in text
