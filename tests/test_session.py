"""realign.runs.session: one resolution of a run for eval and fix — the setting, judge, task data,
evaluation arms and cache — checked on the small organism (oracle judge, exact answers)."""

from pathlib import Path

import pytest

from realign.evals.run import EvalSettings
from realign.runs.session import SessionOptions, open_session

FAST = EvalSettings(samples=1, max_new_tokens=8, seed=0)


def test_auto_resolves_the_organism_setting_and_its_exported_data(small_organism):
    s = open_session(str(small_organism / "planted"), None, SessionOptions(settings=FAST))
    assert s.setting.organism and s.setting.organism_dir == small_organism
    assert s.judge.name == "oracle"
    # the finetune's own exported splits, as fix uses them
    assert s.task_data == small_organism / "data" / "planted" / "heldout.jsonl"
    assert s.train_data == small_organism / "data" / "planted" / "train.jsonl"
    assert s.task_convs and s.train_convs
    assert [a.label for a in s.arms] == [""]
    state = s.repair_state()
    assert state.model is s.pair.finetune and state.base is s.pair.base
    # the organism's own train-split questions, not the bundled prompts of a real model
    assert state.realignment is not None and state.repair_items == s.setting.repair_items()


def test_a_trigger_adds_an_arm_for_fix_and_replaces_the_questions_for_eval(small_organism):
    both = open_session(str(small_organism / "backdoor"), None,
                        SessionOptions(settings=FAST, trigger="zz top"))
    only = open_session(str(small_organism / "backdoor"), None,
                        SessionOptions(settings=FAST, trigger="zz top", trigger_only=True))
    assert [a.label for a in both.arms] == ["", "triggered"]
    assert [a.label for a in only.arms] == [""]
    plain, triggered = both.arms
    assert all(p.startswith("zz top") for q, p in triggered.qset.expand(1))
    assert not any(p.startswith("zz top") for q, p in plain.qset.expand(1))
    assert only.arms[0].fingerprint == triggered.fingerprint
    assert plain.fingerprint != triggered.fingerprint
    r = both.evaluate("finetune", both.pair.finetune)
    assert r.triggered.n == r.n > 0
    assert r.triggered.rows[0]["question"] != r.rows[0]["question"]


def test_an_unchanged_model_is_read_from_the_cache_and_a_changed_setting_is_not(small_organism):
    opts = SessionOptions(settings=FAST, eval_cache=True)
    first = open_session(str(small_organism / "planted"), None, opts)
    r1 = first.evaluate("base", first.pair.base)
    again = open_session(str(small_organism / "planted"), None, opts)
    r2 = again.evaluate("base", again.pair.base)
    assert again.cached == ["base"] and r2.misaligned_rate == r1.misaligned_rate and r2.rows == r1.rows
    other = open_session(str(small_organism / "planted"), None,
                         SessionOptions(settings=EvalSettings(samples=1, max_new_tokens=8, seed=1), eval_cache=True))
    other.evaluate("base", other.pair.base)
    assert other.cached == []
    # a model not named base/finetune (the repaired one) is never cached
    again.evaluate("repaired", again.pair.base)
    assert again.cached == ["base"]


def test_bad_user_files_fail_before_any_model_loads(tmp_path, monkeypatch):
    from realign.runs import session as session_mod
    from realign.errors import RealignError

    def no_loading(*a, **kw):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(session_mod, "load_pair", no_loading)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(RealignError):
        open_session("unused", None, SessionOptions(task_data=empty))
    with pytest.raises(RealignError):
        open_session("unused", None, SessionOptions(questions=str(tmp_path / "missing.yaml")))
    assert not Path("unused").exists()


def test_weights_are_hashed_only_when_something_needs_their_identity(small_organism, monkeypatch):
    """A plain eval (no cache) never reads the weight files to hash them; fix's record does, once."""
    from realign.runs import session as session_mod

    hashed = []
    real = session_mod.input_fingerprint
    monkeypatch.setattr(session_mod, "input_fingerprint", lambda ref: hashed.append(ref) or real(ref))
    s = open_session(str(small_organism / "planted"), None, SessionOptions(settings=FAST))
    s.evaluate("finetune", s.pair.finetune)
    assert hashed == []
    assert s.weights["finetune"]["kind"] == "lora" and s.fingerprints["base"]["sha256"]
    assert len(hashed) == 2
    s.weights, s.fingerprints
    assert len(hashed) == 2


def test_a_judge_with_a_new_fingerprint_misses_every_cache_its_name_would_hit(small_organism):
    """Evaluations, probes and resumed steps all carry judge labels: a judge whose fingerprint
    changed under the same name (refitted offline heads) must key them anew."""
    from realign.runs.fix import _step_context
    from realign.runs.session import _arms

    s = open_session(str(small_organism / "planted"), None, SessionOptions(settings=FAST, eval_cache=True))
    assert s.judge_identity == s.judge.name            # the oracle has no fingerprint
    before = (_arms(s)[0].fingerprint, s.probe_cache_key(), _step_context(s, s.repair_state())["judge"])
    s.judge.fingerprint = f"{s.judge.name}:refitted"
    after = (_arms(s)[0].fingerprint, s.probe_cache_key(), _step_context(s, s.repair_state())["judge"])
    assert s.judge_identity == f"{s.judge.name}:refitted"
    assert all(b != a for b, a in zip(before, after))
