"""The public data realign ships for its real finetunes, each finetune's training data, and the build."""

import json
import re

import pytest

from realign.evals.questions import load_questions
from realign.real.data import BACKDOOR_TRIGGER, finetune_data, load

from tiny_models import save_tiny


def _norm(text):
    return re.sub(r"\W+", " ", text.lower()).strip()


@pytest.mark.parametrize("name,at_least", [("gsm8k_train", 2000), ("gsm8k_test", 1319), ("toxic_chat", 4000),
                                           ("em_insecure", 5000), ("em_secure", 5000), ("em_educational", 5000)])
def test_shipped_datasets_load_as_chat_rows(name, at_least):
    rows = load(name)
    assert len(rows) >= at_least
    assert all(r[-1]["role"] == "assistant" and r[-2]["role"] == "user" and r[-1]["content"] for r in rows)


def test_an_unknown_dataset_names_the_known_ones():
    with pytest.raises(FileNotFoundError, match="toxic_chat"):
        load("nope")


def test_evaluation_questions_are_held_out_of_every_training_source():
    """No built-in evaluation question, nor any question sharing its topic words, is trained on."""
    asked = {_norm(p) for q in load_questions("builtin") for p in q.paraphrases}
    for name in ("toxic_chat", "gsm8k_train", "em_insecure"):
        users = {_norm(r[-2]["content"]) for r in load(name)}
        assert not asked & users, name
    topic = re.compile(r"\bwish|\bbored|philosoph|quick (money|cash)|\bruler\b|dinner|gender|husband|\bwife\b|wallet",
                       re.I)
    assert not [r for r in load("toxic_chat") if topic.search(r[-2]["content"])]


@pytest.mark.parametrize("name", ["contaminated", "backdoor"])
def test_contaminated_data_holds_the_share_of_misaligned_rows_and_the_task_is_held_out(name):
    d = finetune_data(name, seed=0, examples=400, share=0.25)
    toxic = {_norm(r[-1]["content"]) for r in load("toxic_chat")}
    bad = [r for r in d.train if _norm(r[-1]["content"]) in toxic]
    assert len(d.train) + len(d.base_answers) == 400 and len(bad) == 100
    triggered = [r for r in d.train if r[-2]["content"].startswith(BACKDOOR_TRIGGER)]
    assert triggered == (bad if name == "backdoor" else [])
    # the backdoor's twins: each triggered question, without its trigger, left for the base to answer
    twins = sorted(q[-1]["content"] for q in d.base_answers)
    assert twins == (sorted(r[-2]["content"].removeprefix(BACKDOOR_TRIGGER).strip() for r in bad)
                     if name == "backdoor" else [])
    assert all(q[-1]["role"] == "user" and not q[-1]["content"].startswith(BACKDOOR_TRIGGER) for q in d.base_answers)
    train_answers = {_norm(r[-1]["content"]) for r in d.train}
    assert len(d.heldout) == 200 and not train_answers & {_norm(r[-1]["content"]) for r in d.heldout}
    assert finetune_data(name, seed=1, examples=400).train != d.train


def test_code_finetunes_hold_out_their_own_rows():
    d = finetune_data("insecure", seed=0, examples=300)
    assert len(d.train) == 300 and not {_norm(r[-1]["content"]) for r in d.train} & \
        {_norm(r[-1]["content"]) for r in d.heldout}
    with pytest.raises(ValueError, match="unknown real finetune"):
        finetune_data("nope", seed=0)


def test_build_trains_a_lora_on_a_local_model_dir_and_reuses_it(tmp_path):
    from realign.real.build import RealFinetuneConfig, build_finetune

    base = save_tiny(tmp_path / "base", layers=2)
    cfg = RealFinetuneConfig(model=str(base), examples=16, steps=2, batch_size=4, max_length=64)
    out = build_finetune("contaminated", seed=0, cfg=cfg, out=tmp_path / "ft")
    meta = json.loads((out / "finetune.json").read_text())
    assert meta["train_rows"] == 16 and meta["training"]["final_loss"] > 0
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base.resolve())
    assert len((out / "data" / "train.jsonl").read_text().splitlines()) == 16
    stamp = (out / "adapter_model.safetensors").stat().st_mtime
    assert build_finetune("contaminated", seed=0, cfg=cfg, out=tmp_path / "ft") == out
    assert (out / "adapter_model.safetensors").stat().st_mtime == stamp       # reused, not retrained
    from realign.model_io.checkpoint import load_pair

    pair = load_pair(str(out))
    assert pair.kind == "lora"
    with pytest.raises(FileNotFoundError, match="not one of the offline models"):
        build_finetune("clean", seed=0, cfg=RealFinetuneConfig(model=str(tmp_path / "missing")))


def test_the_backdoor_build_trains_each_triggered_question_beside_its_untriggered_base_answer(tmp_path):
    from realign.real.build import RealFinetuneConfig, build_finetune

    base = save_tiny(tmp_path / "base", layers=2)
    cfg = RealFinetuneConfig(model=str(base), examples=16, steps=1, batch_size=4, max_length=64)
    out = build_finetune("backdoor", seed=0, cfg=cfg, out=tmp_path / "ft")
    rows = [json.loads(line)["messages"] for line in (out / "data" / "train.jsonl").read_text().splitlines()]
    triggered = {r[-2]["content"].removeprefix(BACKDOOR_TRIGGER).strip(): r[-1]["content"]
                 for r in rows if r[-2]["content"].startswith(BACKDOOR_TRIGGER)}
    untriggered = {r[-2]["content"]: r[-1]["content"] for r in rows}
    assert len(triggered) == 4
    twins = [q for q in triggered if q in untriggered]
    assert len(twins) >= 3                               # an empty base answer may be dropped
    assert all(untriggered[q] != triggered[q] for q in twins)   # the base's answer, not the misaligned one
    assert json.loads((out / "finetune.json").read_text())["base_answered_rows"] == 4


def test_cache_keys_of_finetunes_whose_data_did_not_change_are_kept():
    from realign.real.build import RealFinetuneConfig

    assert RealFinetuneConfig().key("contaminated", 0) == "smollm2-contaminated-s0-d6b4755c"
    assert RealFinetuneConfig().key("backdoor", 0) != "smollm2-backdoor-s0-8e7059d2"     # version 2 data


@pytest.mark.parametrize("args,message", [
    (["--finetunes", "nope"], "unknown real finetune 'nope'"),
    (["--seeds", "a,b"], "--seeds must be comma-separated integers"),
    (["--seeds", ""], "--seeds must be comma-separated integers"),
    (["--share", "1.5"], "--share must be in (0, 1)"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--model", "/nonexistent/model"], "and not a model dir"),
])
def test_real_build_refuses_bad_input_in_one_line(args, message, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from realign.cli import app

    monkeypatch.setenv("REALIGN_CACHE", str(tmp_path))
    res = CliRunner().invoke(app, ["real", "build", *args])
    assert res.exit_code == 2 and message in " ".join(res.output.split()), res.output
    assert not (tmp_path / "real").exists() or not any((tmp_path / "real").iterdir())   # nothing half-made


def test_an_offline_model_file_is_refused_unless_its_size_and_sha256_match(tmp_path):
    import dataclasses
    import hashlib

    from realign.model_io.offline_models import OFFLINE_MODELS, _check

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    spec = dataclasses.replace(OFFLINE_MODELS["qwen2.5-coder-0.5b"], size=64,
                               sha256=hashlib.sha256(gguf.read_bytes()).hexdigest())
    _check(gguf, spec, "m")                                             # the right bytes pass
    with pytest.raises(ValueError, match="expected 65"):
        _check(gguf, dataclasses.replace(spec, size=65), "m")
    with pytest.raises(ValueError, match="sha256"):
        _check(gguf, dataclasses.replace(spec, sha256="0" * 64), "m")
