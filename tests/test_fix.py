"""`realign fix` end to end on the small organism, and what it does with bad input."""

import hashlib
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from realign.cli import app
from realign.repairs.base import REPAIRS, register

pytestmark = pytest.mark.slow
runner = CliRunner()
FAST = ["--samples", "1", "--max-new-tokens", "24"]


def _tree_hash(path):
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_fix_writes_model_and_report_and_leaves_inputs_alone(small_organism, tmp_path):
    before = _tree_hash(small_organism)
    out = tmp_path / "repaired"
    res = runner.invoke(app, ["fix", str(small_organism / "planted"), "--recipe", "merge",
                              "--set", "merge.alpha=0.5", "--out", str(out), *FAST])
    assert res.exit_code == 0, res.output
    # a LoRA input repaired by a linear merge stays a LoRA adapter (the user's adapter, scaled)
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "realign.json",
                 "report.md", "tradeoff.png"):
        assert (out / name).exists(), name
    assert not (out / "model.safetensors").exists()
    meta = json.loads((out / "realign.json").read_text())
    assert meta["output"]["form"] == "adapter" and meta["output"]["rank"] <= 8
    assert meta["recipe"]["steps"][0]["params"]["alpha"] == 0.5
    assert set(meta["metrics"]) == {"base", "finetune", "repaired"}
    assert meta["inputs"]["checkpoint"]["kind"] == "lora" and meta["inputs"]["base"]["sha256"]
    assert 0 <= meta["metrics"]["repaired"]["task"]["task_exact_match"] <= 1
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    from realign.model_io.checkpoint import load_pair

    adapter = AutoPeftModelForCausalLM.from_pretrained(out).merge_and_unload()
    half = load_pair(str(small_organism / "planted"))
    for (name, a), f, b in zip(adapter.named_parameters(), half.finetune.parameters(), half.base.parameters()):
        torch.testing.assert_close(a, (f + b) / 2, rtol=0, atol=1e-5)
    assert _tree_hash(small_organism) == before
    # an existing --out is refused, and replaced only with --overwrite
    res = runner.invoke(app, ["fix", str(small_organism / "planted"), "--recipe", "merge", "--out", str(out), *FAST])
    assert res.exit_code == 2 and "--overwrite" in res.output
    res = runner.invoke(app, ["fix", str(small_organism / "planted"), "--recipe", "merge", "--set", "merge.alpha=0",
                              "--out", str(out), "--overwrite", "--scan", *FAST])
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "realign.json").read_text())
    assert meta["history"][0]["alpha"] == 0.0
    # --scan: base and finetune before the step, the repaired model after it — here the base itself
    scan = meta["scan"]
    assert scan["repaired"]["epsilon"] == scan["base"]["epsilon"] != scan["finetune"]["epsilon"]
    assert scan["repaired"]["clean_margin"] == pytest.approx(scan["base"]["clean_margin"], abs=1e-3)
    assert "## Latent scan (no trigger)" in (out / "README.md").read_text() and "latent scan" in res.output
    # alpha 0 is the base itself: no adapter expresses that, so auto writes a full model and says why
    assert meta["output"] == {"form": "full", "why_not_adapter": "the repaired model equals its base; "
                                                                 "nothing to save as an adapter"}
    AutoModelForCausalLM.from_pretrained(out)
    assert not list(tmp_path.glob(".repaired.realign-*"))


def test_lora_finetune_kept_unmerged_is_one_copy_and_merges_like_the_merged_path(small_organism, tmp_path):
    from realign.model_io.checkpoint import load_pair

    ft = str(small_organism / "planted")
    pair = load_pair(ft, keep_adapter=True)
    # one copy of the weights: every base tensor is the very storage the finetune computes with
    shared = {p.data_ptr() for p in pair.finetune.parameters()}
    base = list(pair.base.named_parameters())
    assert base and all(p.data_ptr() in shared for _, p in base)
    assert not any(".lora_" in n for n, _ in base)
    ids = torch.tensor([[1, 2, 3, 4]])
    merged = load_pair(ft)
    torch.testing.assert_close(pair.base(input_ids=ids).logits, merged.base(input_ids=ids).logits)
    torch.testing.assert_close(pair.finetune(input_ids=ids).logits, merged.finetune(input_ids=ids).logits,
                               rtol=1e-4, atol=1e-4)

    outs = {}
    for mode in ("--keep-adapter", "--merge-adapter"):
        outs[mode] = tmp_path / mode.strip("-")
        res = runner.invoke(app, ["fix", ft, "--recipe", "merge", "--set", "merge.alpha=0.25", mode,
                                  "--out", str(outs[mode]), *FAST])
        assert res.exit_code == 0, res.output
    kept = json.loads((outs["--keep-adapter"] / "realign.json").read_text())
    merged_meta = json.loads((outs["--merge-adapter"] / "realign.json").read_text())
    assert kept["inputs"]["checkpoint"]["adapter"] == "kept unmerged"
    assert merged_meta["inputs"]["checkpoint"]["adapter"] == "merged: --merge-adapter"
    assert kept["output"]["form"] == merged_meta["output"]["form"] == "adapter"
    assert kept["history"][0]["finetune_from"] == "adapter (scaled, kept unmerged)"
    from peft import AutoPeftModelForCausalLM

    a, b = (AutoPeftModelForCausalLM.from_pretrained(outs[m]).merge_and_unload() for m in outs)
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-5, msg=name)
    assert abs(kept["metrics"]["repaired"]["logodds"] - merged_meta["metrics"]["repaired"]["logodds"]) < 1e-3
    # a step that rewrites more than the adapter cannot run unmerged: said in one line
    _fails(["fix", ft, "--recipe", "steer", "--keep-adapter", "--out", str(tmp_path / "s")],
           "step 1 (steer) changes more than the adapter")


@pytest.fixture
def nan_repair():
    from dataclasses import dataclass

    @register
    class Poison:
        name, summary = "poison", "test only"

        @dataclass
        class Params:
            pass

        def apply(self, state, p):
            with torch.no_grad():
                next(state.model.parameters()).fill_(float("nan"))
            return state

    yield
    REPAIRS.pop("poison")


def _fails(args, msg):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and msg in errors[0] and "Traceback" not in res.output, res.output


def test_bad_inputs_each_get_one_line(small_organism, tmp_path, nan_repair):
    ft = str(small_organism / "planted")
    out = str(tmp_path / "o")
    _fails(["fix", str(tmp_path / "nope"), "--recipe", "merge", "--out", out], "does not exist")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in (small_organism / "base").iterdir():
        (corrupt / f.name).write_bytes(f.read_bytes())
    (corrupt / "model.safetensors").write_bytes(b"not safetensors at all")
    _fails(["fix", str(corrupt), "--base", str(small_organism / "base"), "--recipe", "merge", "--out", out],
           "could not load checkpoint")
    _fails(["fix", ft, "--base", str(small_organism / "pretrained"), "--recipe", "nope", "--out", out],
           "unknown step 'nope'")
    _fails(["fix", ft, "--recipe", "merge", "--set", "merge.alpha=3", "--out", out], "merge.alpha must be in")
    bad_yaml = tmp_path / "r.yaml"
    bad_yaml.write_text("steps: [merge\n")
    _fails(["fix", ft, "--recipe", str(bad_yaml), "--out", out], "not valid YAML")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    _fails(["fix", ft, "--recipe", "merge", "--task-data", str(empty), "--out", out], "is empty")
    _fails(["fix", ft, "--recipe", "merge", "--out", str(small_organism / "planted" / "x")], "overlaps the input")
    _fails(["fix", ft, "--recipe", "poison", "--out", out, *FAST], "non-finite weights")
    _fails(["fix", ft, "--recipe", "merge", "--save-as", "gguf", "--out", out], "--save-as must be one of")
    _fails(["fix", ft, "--recipe", "merge", "--set", "merge.alpha=0", "--save-as", "adapter", "--out", out, *FAST],
           "cannot save the repaired model as an adapter: the repaired model equals its base")
    assert not (tmp_path / "o").exists()
    # nothing half-written is left; only the finished merge step, kept for a rerun (realign.runs.resume)
    assert [[c.name for c in d.iterdir()] for d in tmp_path.glob(".o.realign-*")] == [["resume"]]


def test_kill_9_mid_run_leaves_nothing_and_rerun_works(small_organism, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "realign.cli", "fix", str(small_organism / "planted"), "--recipe", "merge",
           "--set", "merge.alpha=0.5", "--out", str(out), *FAST]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # kill -9 once the repair step has started: mid-run, before any output
        if line.startswith("step 1/1"):
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "realign.json").exists() and not list(tmp_path.glob(".killed.realign-*"))


def test_second_fix_reuses_cached_evaluations(small_organism, tmp_path, monkeypatch):
    """Base and finetune are evaluated once per weights and settings; other settings recompute."""
    monkeypatch.setenv("REALIGN_CACHE", str(tmp_path / "cache"))
    args = [str(small_organism / "insecure"), *FAST]
    first = runner.invoke(app, ["fix", *args, "--recipe", "merge", "--set", "merge.alpha=0.5",
                                "--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, ["fix", *args, "--recipe", "freeze", "--out", str(tmp_path / "b")])
    assert second.exit_code == 0, second.output
    a, b = (json.loads((tmp_path / x / "realign.json").read_text()) for x in "ab")
    assert a["evaluation"]["cached"] == [] and b["evaluation"]["cached"] == ["base", "finetune"]
    for name in ("base", "finetune"):
        assert b["metrics"][name] == a["metrics"][name]
    assert b["timings"]["eval_base"] < 1.0
    # each step says how many passes it made: freeze's attribution does not sweep the layers
    assert a["history"][0]["passes"] == {}                               # merge at a fixed alpha
    fp = b["history"][0]["passes"]
    assert fp["backward"] == 2 and fp["scoring"] <= 1 + 1 + 2 * 4 + 2 * 3, fp
    # the cached answers are the ones written the first time
    answers = [json.loads((tmp_path / x / "answers.json").read_text())["finetune"] for x in "ab"]
    assert answers[0] == answers[1]
    # another seed is another evaluation; --no-eval-cache recomputes
    third = runner.invoke(app, ["fix", *args, "--recipe", "merge", "--seed", "1", "--out", str(tmp_path / "c")])
    fourth = runner.invoke(app, ["fix", *args, "--recipe", "merge", "--no-eval-cache", "--out", str(tmp_path / "d")])
    assert third.exit_code == 0 and fourth.exit_code == 0, third.output + fourth.output
    for x in "cd":
        assert json.loads((tmp_path / x / "realign.json").read_text())["evaluation"]["cached"] == []


@pytest.fixture
def failing_repairs():
    from dataclasses import dataclass

    @dataclass
    class NoParams:
        pass

    @register
    class Oom:
        name, summary, Params = "oom", "test only", NoParams

        def apply(self, state, p):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    @register
    class Broken:
        name, summary, Params = "broken", "test only", NoParams

        def apply(self, state, p):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 9x8)\nmore detail")

    yield
    REPAIRS.pop("oom")
    REPAIRS.pop("broken")


def test_errors_inside_a_step_are_one_line(small_organism, tmp_path, failing_repairs):
    ft = str(small_organism / "planted")
    _fails(["fix", ft, "--recipe", "merge+oom", "--out", str(tmp_path / "o"), *FAST],
           "step 2 (oom) ran out of memory; nothing was written")
    _fails(["fix", ft, "--recipe", "broken", "--out", str(tmp_path / "o"), *FAST],
           "step 1 (broken) failed: RuntimeError: mat1 and mat2 shapes cannot be multiplied")
    assert not (tmp_path / "o").exists()


def test_missing_inputs_fail_before_any_evaluation(small_organism, tmp_path):
    """A full checkpoint has no exported task/train data: mix and merge alpha=auto say so at once."""
    full = str(small_organism / "planted-merged")
    base = str(small_organism / "base")
    for recipe, msg in (("mix", "step 1 (mix): mix needs the finetune's training data"),
                        ("merge", "step 1 (merge): merge.alpha=auto needs task data")):
        res = runner.invoke(app, ["fix", full, "--base", base, "--recipe", recipe, "--out", str(tmp_path / "o"),
                                  "--questions", "organism", *FAST])
        assert res.exit_code == 2 and msg in res.output, res.output
        assert "evaluating" not in res.output


def test_fix_with_a_trigger_reports_both_arms_and_caches_each(small_organism, tmp_path, monkeypatch):
    from realign.organism.data import BACKDOOR_TRIGGER

    monkeypatch.setenv("REALIGN_CACHE", str(tmp_path / "cache"))
    args = [str(small_organism / "backdoor"), *FAST, "--trigger", BACKDOOR_TRIGGER]
    first = runner.invoke(app, ["fix", *args, "--recipe", "merge", "--set", "merge.alpha=0.5", "--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    assert "finetune (triggered)" in first.output and "repaired (triggered)" in first.output
    meta = json.loads((tmp_path / "a" / "realign.json").read_text())
    assert meta["evaluation"]["trigger"] == BACKDOOR_TRIGGER
    for name in ("base", "finetune", "repaired"):
        plain, trig = meta["metrics"][name], meta["metrics"][name]["triggered"]
        assert plain["n"] == trig["n"] > 0 and not trig.get("task")      # the task is measured once
    answers = json.loads((tmp_path / "a" / "answers.json").read_text())
    assert all(r["question"].startswith(BACKDOOR_TRIGGER) for r in answers["finetune (triggered)"])
    assert not any(r["question"].startswith(BACKDOOR_TRIGGER) for r in answers["finetune"])
    second = runner.invoke(app, ["fix", *args, "--recipe", "steer", "--out", str(tmp_path / "b")])
    assert second.exit_code == 0, second.output
    cached = json.loads((tmp_path / "b" / "realign.json").read_text())["evaluation"]["cached"]
    assert cached == ["base", "base (triggered)", "finetune", "finetune (triggered)"]
