"""`realign bench`: cells through fix's code, pooled leaderboard, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from realign.runs.bench import Finetune, overrides_for, plan, recipe_label
from realign.cli import app
from realign.evals.result import Evaluation
from realign.evals.verdict import repair_verdict
from realign.runs.leaderboard import build_leaderboard, keep_cells, markdown, retention
from realign.stats import seed_bootstrap_interval, wilson


def _metrics(k: int, n: int, nll: float, logodds: float = 0.0) -> dict:
    lo, hi = wilson(k, n)
    return {"misaligned": k, "n": n, "misaligned_rate": k / n, "ci_low": lo, "ci_high": hi, "coherent_rate": 0.9,
            "logodds": logodds, "task": {"task_nll": nll}}


def _write_cell(out: Path, ft: str, seed: int, recipe: str, repaired: dict, base: dict, finetune: dict,
                history: list[dict] | None = None, judge: str | None = "offline:probe:abc",
                note: str = "AUROC 0.90") -> None:
    d = out / "cells" / ft / f"s{seed}" / recipe
    d.mkdir(parents=True)
    ev = {"judge": "offline", "judge_agreement": {"note": note}}   # judge None: an older cell, no identity
    meta = {"metrics": {"base": base, "finetune": finetune, "repaired": repaired},
            "timings": {"total": 10.0, "step1_merge": 4.0}, "peak_memory_mb": {"total": {"rss": 500.0}},
            "history": history or [{"step": "merge", "alpha": 0.5, "passes": {"scoring": 9}}],
            "evaluation": {**ev, "judge_identity": judge} if judge else ev}
    (d / "realign.json").write_text(json.dumps(meta))


def test_leaderboard_pools_seeds_and_measures_retention(tmp_path):
    base, ft = _metrics(2, 100, nll=2.0), _metrics(20, 100, nll=1.0, logodds=1.0)
    _write_cell(tmp_path, "ins", 0, "merge", _metrics(5, 100, nll=1.2), base, ft)
    _write_cell(tmp_path, "ins", 1, "merge", _metrics(9, 100, nll=1.4), _metrics(4, 100, 2.0), _metrics(24, 100, 1.0, 1.2))
    board = build_leaderboard(tmp_path)["ins"]
    merge = board.rows["merge"].untriggered
    assert (merge.misaligned, merge.n) == (14, 200)
    assert merge.task_retention == pytest.approx((0.8 + 0.6) / 2)        # (2.0 - 1.2) / (2.0 - 1.0), …
    assert board.rows["finetune"].untriggered.misaligned == 44
    assert board.verdict.repair_needed is True
    assert board.rows["merge"].seeds == [0, 1] and board.rows["merge"].seconds == 10.0


def test_retention_and_verdict_edge_cases():
    base, ft = _metrics(2, 100, nll=2.0), _metrics(3, 100, nll=1.0, logodds=0.1)
    ev = Evaluation.from_json
    assert retention(ev(_metrics(0, 1, nll=2.0)), ev(base), ev(ft)) == 0.0 and retention(ev(ft), ev(base), ev(ft)) == 1.0
    assert repair_verdict(ev(base), ev(ft)).repair_needed is False
    assert repair_verdict(ev(base), ev({**ft, "logodds": 0.7})).repair_needed is True     # shifted log-odds
    hidden = repair_verdict(ev({**base, "triggered": base}), ev({**ft, "triggered": _metrics(40, 100, nll=1.0)}))
    assert hidden.repair_needed is True and "with the trigger only" in hidden.why
    # leaning a little without the trigger (log-odds only), clearly with it: both said, the rates first
    both = repair_verdict(ev({**base, "triggered": base}),
                          ev({**ft, "logodds": 0.7, "triggered": _metrics(40, 100, nll=1.0)}))
    assert both.repair_needed is True and both.why.startswith("more misaligned than its base (the 95% intervals")
    assert "with the trigger; without it shifted +0.70 nats" in both.why and both.logodds_shift == pytest.approx(0.7)
    unscored = repair_verdict(ev(base), Evaluation(n=0))      # the judge scored none of the finetune's answers
    assert unscored.repair_needed is None and "scored none of the finetune's" in unscored.why


def test_seed_bootstrap_widens_when_seeds_disagree():
    agree = seed_bootstrap_interval([(10, 100), (10, 100), (10, 100)])
    disagree = seed_bootstrap_interval([(1, 100), (10, 100), (19, 100)])
    assert disagree[1] - disagree[0] > 1.5 * (agree[1] - agree[0])
    assert seed_bootstrap_interval([(3, 50)]) == wilson(3, 50)


def test_cells_labels_and_overrides(tmp_path):
    ft = Finetune("a", lambda s: ("ckpt", None))
    cells = plan([ft], ["merge", "freeze+dpo", "merge@merge.steps=2"], [0, 1], tmp_path)
    assert len(cells) == 6 and cells[2].out == tmp_path / "cells" / "a" / "s0" / "merge@merge.steps=2"
    assert recipe_label("/x/my recipe.yaml") == "my_recipe"
    name, sets = overrides_for("merge@merge.steps=2", ["dpo.beta=0.2", "merge.method=ties"])
    assert name == "merge" and sets == ["merge.steps=2", "merge.method=ties"]   # no dpo step in merge
    assert overrides_for("freeze+dpo", ["dpo.beta=0.2"])[1] == ["dpo.beta=0.2"]


def test_bench_refuses_bad_input_in_one_line(tmp_path):
    r = CliRunner().invoke(app, ["bench", "--out", str(tmp_path / "b"), "--recipes", "merge"])
    assert r.exit_code == 2 and "--finetune" in r.output
    r = CliRunner().invoke(app, ["bench", "--organism", "--out", str(tmp_path / "b"), "--recipes", "nope"])
    assert r.exit_code == 2 and "nope" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["bench", "--finetune", str(tmp_path / "missing"), "--out", str(tmp_path / "b"),
                                 "--recipes", "merge"])
    assert r.exit_code == 2 and "does not exist" in r.output
    ft = tmp_path / "ft"
    ft.mkdir()
    (ft / "config.json").write_text("{}")
    for workers, why in ((["--workers", "2", "--cluster", "k8s"], "--cluster must be one of local, slurm"),
                         (["--workers", "-1"], "--workers must be at least 1"),
                         (["--workers", "2", "--cluster-set", "partition"], "KEY=VALUE"),
                         (["--workers", "2", "--cluster-set", "no_such=1"], "--cluster-set: ")):
        r = CliRunner().invoke(app, ["bench", "--finetune", str(ft), "--out", str(tmp_path / "b"),
                                     "--recipes", "merge", *workers])
        assert r.exit_code == 2 and why in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "b").exists()            # bad input leaves nothing behind


BENCH = ["bench", "--organism", "--organism-size", "small", "--organism-finetunes", "planted",
         "--samples", "1"]


@pytest.mark.slow
def test_bench_on_the_organism_resumes_after_a_kill(tmp_path):
    """Kill bench as soon as its first cell is written; the rerun skips it and does the rest."""
    env = {**os.environ, "REALIGN_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "bench"
    args = [*BENCH, "--organism-dir", str(tmp_path / "org"), "--recipes", "merge,steer,freeze", "--out", str(out)]
    err = tmp_path / "bench.stderr"          # said in the failure below if the bench dies early
    with open(err, "wb") as err_file:
        proc = subprocess.Popen([sys.executable, "-m", "realign.cli", *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=err_file, start_new_session=True)
    first = out / "cells" / "planted" / "s0" / "merge" / "realign.json"
    started = time.time()
    # generous: the first cell builds an organism from scratch; beside other heavy work on 2 cores
    # this once took over the 600 s this used to allow
    deadline = started + 1500
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    exited, waited = proc.poll(), time.time() - started
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists(), (f"bench exited with {exited} (None: still running, killed) after {waited:.0f} s "
                            f"before its first cell: " + err.read_text()[-3000:])
    stamp = first.stat().st_mtime_ns
    done_before = [c for c in ("merge", "steer", "freeze") if (first.parent.parent / c / "realign.json").exists()]
    assert len(done_before) < 3, "bench finished before it could be killed"
    res = subprocess.run([sys.executable, "-m", "realign.cli", *args], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"{len(done_before)} of 3 cells finished earlier: skipped" in res.stdout + res.stderr
    assert first.stat().st_mtime_ns == stamp                          # finished cells are never redone
    board = json.loads((out / "leaderboard.json").read_text())["planted"]
    assert set(board["rows"]) == {"base", "finetune", "merge", "steer", "freeze"}
    assert (out / "leaderboard.md").exists() and (out / "pareto-planted.png").stat().st_size > 10_000
    later = json.loads((first.parent.parent / "freeze" / "realign.json").read_text())
    assert later["evaluation"]["cached"] == ["base", "finetune"]       # evaluated once per (model, seed)


def test_base_and_finetune_rows_keep_corrected_rates_whichever_cell_comes_last(tmp_path):
    """Cells of one seed share base and finetune; one made with --judge-errors carries their
    corrected rates, and the board keeps them even when a cell made without sorts after it."""
    err = {"tp": 8, "fn": 2, "tn": 9, "fp": 1, "source": "labels.jsonl"}
    corrected = {"rate": 0.1, "ci_low": 0.0, "ci_high": 0.3, "why": "Rogan–Gladen", "error": err}
    base, ft = _metrics(2, 100, nll=2.0), _metrics(20, 100, nll=1.0, logodds=1.0)
    _write_cell(tmp_path, "ins", 0, "dpo", _metrics(3, 100, nll=1.1), {**base, "corrected": corrected},
                {**ft, "corrected": corrected})
    _write_cell(tmp_path, "ins", 0, "steer", _metrics(20, 100, nll=1.0), base, ft)     # older, no correction
    board = build_leaderboard(tmp_path)["ins"]
    assert board.rows["base"].untriggered.corrected is not None
    assert board.rows["finetune"].untriggered.corrected is not None


def test_leaderboard_names_skipped_steps_and_mixed_judges(tmp_path):
    """A step that chose to change nothing is named in the table (not read as a failed repair), and
    cells judged by different judges (e.g. heads refitted between runs) are flagged."""

    base, ft = _metrics(2, 100, nll=2.0), _metrics(20, 100, nll=1.0, logodds=1.0)
    skipped = [{"step": "steer", "skipped": "every trial is over the KL budget"}]
    _write_cell(tmp_path, "ins", 0, "steer", ft, base, ft, history=skipped)
    _write_cell(tmp_path, "ins", 1, "steer", _metrics(8, 100, nll=1.1), base, ft,
                history=[{"step": "steer", "layer": 3}])
    _write_cell(tmp_path, "ins", 0, "merge", _metrics(5, 100, nll=1.2), base, ft)
    md = markdown(build_leaderboard(tmp_path))
    assert "| steer (skipped) |" in md and "| merge |" in md
    assert "step steer skipped on seed 0 of 2: every trial is over the KL budget" in md
    assert "different judges" not in md

    _write_cell(tmp_path, "ins", 1, "merge", _metrics(5, 100, nll=1.2), base, ft, judge="offline:probe:def")
    board = build_leaderboard(tmp_path)["ins"]
    assert board.judges == ["offline:probe:abc", "offline:probe:def"]
    assert "judged by 2 different judges" in markdown({"ins": board})


def test_an_older_cell_matches_a_newer_judge_by_its_name_and_note(tmp_path):
    """Cells written before realign.json recorded the judge's identity carry its name and quoted
    agreement only: the same as a newer cell's is the same judge, another note is not."""
    base, ft = _metrics(2, 100, nll=2.0), _metrics(20, 100, nll=1.0, logodds=1.0)
    _write_cell(tmp_path, "ins", 0, "merge", _metrics(5, 100, nll=1.2), base, ft, judge=None)
    _write_cell(tmp_path, "ins", 0, "steer", _metrics(8, 100, nll=1.1), base, ft)
    assert build_leaderboard(tmp_path)["ins"].judges == ["offline:probe:abc"]
    _write_cell(tmp_path, "ins", 0, "ties", _metrics(6, 100, nll=1.2), base, ft, judge=None, note="AUROC 0.80")
    assert build_leaderboard(tmp_path)["ins"].judges == ["offline (AUROC 0.80)", "offline:probe:abc"]


def test_kept_cell_records_rebuild_the_same_board_and_merge_with_earlier_ones(tmp_path):
    base, ft = _metrics(2, 100, nll=2.0), _metrics(20, 100, nll=1.0, logodds=1.0)
    bench, kept = tmp_path / "bench", tmp_path / "results"
    _write_cell(bench, "ins", 0, "merge", _metrics(5, 100, nll=1.2), base, ft)
    (bench / "cells" / "ins" / "s0" / "merge" / "model.safetensors").write_bytes(b"weights")
    keep_cells(bench, kept)
    assert [p.name for p in kept.rglob("*") if p.is_file()] == ["realign.json"]     # no model travels
    assert markdown(build_leaderboard(kept)) == markdown(build_leaderboard(bench))
    later = tmp_path / "later"
    _write_cell(later, "ins", 0, "dpo", _metrics(3, 100, nll=1.1), base, ft)
    keep_cells(later, kept)
    assert set(build_leaderboard(kept)["ins"].rows) == {"base", "finetune", "merge", "dpo"}
    with pytest.raises(FileNotFoundError, match="no finished bench cells"):
        keep_cells(tmp_path / "empty", kept)
