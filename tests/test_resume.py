"""`realign fix` after a kill: a rerun of the same command continues after the last finished step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from realign.cli import app
from realign.repairs.base import REPAIRS, RepairState, register
from realign.repairs.probes import Probes
from realign.runs.resume import Progress

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "resume_driver.py"      # `realign` plus the test-only hooks (kept out of the package)
FAST = ["--samples", "1", "--max-new-tokens", "24"]
runner = CliRunner()


def _env(**extra) -> dict:
    src = str(HERE.parent / "src")
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    # the same thread count as this process (conftest), so that in-process reference runs compute alike
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2", **extra}


def _kill_when(args: list[str], ready, **env) -> None:
    """Start the driver with `args`, SIGKILL it as soon as ready() holds."""
    proc = subprocess.Popen([sys.executable, str(DRIVER), *args], env=_env(**env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    alive = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    err = proc.communicate()[1]
    assert alive and ready(), f"the run ended before it could be killed:\n{err[-2000:]}"


def _rerun(args: list[str]) -> str:
    res = subprocess.run([sys.executable, str(DRIVER), *args], env=_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stderr


def _without_seconds(metrics: dict) -> dict:
    return {name: {k: v for k, v in m.items() if k != "seconds"} for name, m in metrics.items()}


@pytest.mark.slow
def test_kill_between_steps_resumes_after_step_1_with_an_uninterrupted_runs_output(small_organism, tmp_path):
    out = tmp_path / "fixed"
    # two real steps that are fast on the small organism; step 2 merges what step 1 made
    def fix(out: Path) -> list[str]:
        return ["fix", str(small_organism / "planted"), "--recipe", "merge+merge", "--set", "1.alpha=0.5",
                "--set", "2.alpha=0.8", "--out", str(out), *FAST]

    args = fix(out)
    state = tmp_path / ".fixed.realign-tmp" / "resume" / "state.json"
    _kill_when(args, state.exists, REALIGN_TEST_PAUSE_AFTER_SAVE="1")   # it sleeps after saving step 1
    saved = json.loads(state.read_text())
    assert saved["step"] == 1 and not out.exists()

    err = _rerun(args)
    assert "resuming after step 1/2 (merge finished earlier" in err, err
    assert "step 1/2:" not in err and "step 2/2: merge" in err          # step 1 is not run again
    meta = json.loads((out / "realign.json").read_text())
    assert meta["resumed_after_step"] == 1
    # step 1's figures are the killed process's own
    assert meta["timings"]["step1_merge"] == round(saved["timings"]["step1_merge"], 2)
    assert meta["peak_memory_mb"]["step1_merge"] == saved["peak_memory_mb"]["step1_merge"]
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "answers.json", "report.md",
                 "tradeoff.png"):
        assert (out / name).exists(), name
    assert not (out / "resume").exists() and not list(tmp_path.glob(".fixed.realign-*"))

    # the same content as a run that was never killed
    ref = tmp_path / "ref"
    res = runner.invoke(app, fix(ref))
    assert res.exit_code == 0, res.output
    expected = json.loads((ref / "realign.json").read_text())
    assert expected["resumed_after_step"] is None
    assert meta["history"] == expected["history"] and [h["alpha"] for h in meta["history"]] == [0.5, 0.8]
    assert _without_seconds(meta["metrics"]) == _without_seconds(expected["metrics"])
    assert meta["recipe"] == expected["recipe"]
    assert (out / "answers.json").read_text() == (ref / "answers.json").read_text()
    # the same adapter: B·A per module (the factors themselves come from an SVD, which two processes may
    # rotate differently; so may its reconstruction error, of order 1e-8)
    assert {k: v for k, v in meta["output"].items() if k != "max_abs_error"} == \
        {k: v for k, v in expected["output"].items() if k != "max_abs_error"}
    from safetensors.torch import load_file

    got, want = (load_file(d / "adapter_model.safetensors") for d in (out, ref))
    assert got.keys() == want.keys()
    for a_key in (k for k in got if "lora_A" in k):
        b_key = a_key.replace("lora_A", "lora_B")
        torch.testing.assert_close(got[b_key] @ got[a_key], want[b_key] @ want[a_key], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_kill_inside_step_2_reruns_step_2_only_from_the_state_after_step_1(small_organism, tmp_path):
    out = tmp_path / "fixed"
    args = ["fix", str(small_organism / "planted"), "--recipe", "merge+hold", "--set", "merge.alpha=0.5",
            "--save-as", "full", "--out", str(out), *FAST]
    inside = tmp_path / "inside-step-2"
    # `hold` scales the embeddings in memory, then waits to be killed
    _kill_when(args, inside.exists, REALIGN_TEST_HOLD=str(inside))
    state = tmp_path / ".fixed.realign-tmp" / "resume" / "state.json"
    assert json.loads(state.read_text())["step"] == 1

    err = _rerun(args)
    assert "resuming after step 1/2 (merge finished earlier" in err, err
    assert "step 1/2:" not in err and "step 2/2: hold" in err
    meta = json.loads((out / "realign.json").read_text())
    assert meta["resumed_after_step"] == 1
    assert [h["step"] for h in meta["history"]] == ["merge", "hold"] and meta["history"][1] == {
        "step": "hold", "scale": 0.9, "passes": {}}
    # the killed process's in-memory scaling is gone: the embeddings are scaled once, on step 1's weights
    from transformers import AutoModelForCausalLM

    from realign.model_io.checkpoint import load_pair

    merged = load_pair(str(small_organism / "planted"))
    with torch.no_grad():
        for p, b, f in zip(merged.finetune.parameters(), merged.base.parameters(), merged.finetune.parameters()):
            p.copy_(b + 0.5 * (f - b))
        want = merged.finetune.get_input_embeddings().weight * 0.9
    got = AutoModelForCausalLM.from_pretrained(out).get_input_embeddings().weight
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert not list(tmp_path.glob(".fixed.realign-*"))


@pytest.fixture
def failing_step():
    @register
    class Fails:
        name, summary = "fails", "test only: always fails"

        @dataclass
        class Params:
            pass

        def apply(self, state, p):
            raise RuntimeError("no luck")

    yield
    REPAIRS.pop("fails")


def _fix(*args) -> tuple[int, str]:
    res = runner.invoke(app, ["fix", *args, *FAST])
    return res.exit_code, res.output


@pytest.mark.slow
def test_only_the_same_first_steps_are_resumed_and_no_resume_starts_over(small_organism, tmp_path, failing_step):
    ft, out = str(small_organism / "planted"), tmp_path / "o"
    state = tmp_path / ".o.realign-tmp" / "resume" / "state.json"

    def fails_in_step_2(*args) -> str:
        code, output = _fix(ft, "--recipe", "merge+fails", *args, "--out", str(out))
        assert code == 2 and "step 2 (fails) failed: RuntimeError: no luck" in output, output
        # a failed step keeps the finished ones for a rerun
        assert json.loads(state.read_text())["step"] == 1 and not out.exists()
        return output

    output = fails_in_step_2("--set", "merge.alpha=0.5")
    assert "resuming" not in output and "step 1/2: merge" in output
    # another step 1 (other parameters) cannot use that state: dropped with a note, step 1 runs
    output = fails_in_step_2("--set", "merge.alpha=0.3")
    assert "discarding the saved progress of an earlier run" in output and "step 1/2: merge" in output, output
    assert "resuming" not in output
    # --no-resume starts over even where the state would fit
    output = fails_in_step_2("--set", "merge.alpha=0.3", "--no-resume")
    assert "resuming" not in output and "discarding" not in output and "step 1/2: merge" in output, output
    # the same step 1 with another step 2 (a fix of what failed) continues after step 1
    # (--merge-adapter: merge+merge alone would keep the LoRA unmerged — another load, another state)
    code, output = _fix(ft, "--recipe", "merge+merge", "--set", "1.alpha=0.3", "--set", "2.alpha=1",
                        "--merge-adapter", "--out", str(out))
    assert code == 0 and "resuming after step 1/2 (merge" in output and "step 1/2:" not in output, output
    assert "step 2/2: merge" in output
    meta = json.loads((out / "realign.json").read_text())
    assert meta["resumed_after_step"] == 1 and [h["alpha"] for h in meta["history"]] == [0.3, 1.0]
    assert not list(tmp_path.glob(".o.realign-*"))


def _tied_model(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=True)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


STEPS = [{"step": "one", "params": {"k": 1}}, {"step": "two", "params": {}}]


def test_state_holds_changed_tensors_only_and_a_kill_while_saving_keeps_the_previous_one(tmp_path, monkeypatch):
    tmp = tmp_path / ".out.realign-tmp"
    model = _tied_model()
    progress = Progress(tmp, True)
    progress.prepare(fresh=False)
    progress.track(model, {"inputs": "x"})
    state = RepairState(model=model, base=None, tokenizer=None)
    with torch.no_grad():
        model.model.embed_tokens.weight.add_(1.0)          # tied: the readout changes with it
    state.record("one", value=(1, 2))                        # a tuple: kept as JSON will write it
    state.locked.add("model.layers.0.mlp.up_proj.weight")
    state._base_task_nll["nll"] = 2.5
    state.probes = Probes([[{"role": "user", "content": "q"}]], [["a"]], [["b"]], [[False]], [[None]])
    progress.save(1, STEPS, state, {"load": 3.0, "step1_one": 1.5}, {})
    from safetensors.torch import load_file

    saved = load_file(tmp / "resume" / "weights-1.safetensors")
    assert list(saved) in (["model.embed_tokens.weight"], ["lm_head.weight"])   # one name of the tied pair

    # killed after step 2's weights were written, before its state replaced step 1's
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(2)
    state.record("two")
    real_replace = os.replace

    def killed_at_state(src, dst):
        if Path(dst).name == "state.json":
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr("realign.paths.os.replace", killed_at_state)
    with pytest.raises(KeyboardInterrupt):
        progress.save(2, STEPS, state, {"step1_one": 1.5, "step2_two": 1.0}, {})
    monkeypatch.undo()

    fresh = _tied_model()                                    # the unchanged finetune, loaded again
    again = Progress(tmp, True)
    again.prepare(fresh=False)
    again.track(fresh, {"inputs": "x"})
    found = again.find(STEPS)
    assert found is not None and found.step == 1
    restored = RepairState(model=fresh, base=None, tokenizer=None)
    timings, peaks = again.restore(found, restored)
    assert timings == {"step1_one": 1.5} and peaks == {}
    assert [h.to_json() for h in restored.history] == [{"step": "one", "value": [1, 2]}] and restored.locked == state.locked
    assert restored._base_task_nll == {"nll": 2.5} and restored.probes == state.probes
    original = _tied_model()
    with torch.no_grad():
        torch.testing.assert_close(fresh.lm_head.weight, original.lm_head.weight + 1, rtol=0, atol=0)
        assert torch.equal(fresh.model.layers[1].mlp.down_proj.weight, original.model.layers[1].mlp.down_proj.weight)

    # other inputs, or another first step: not this run's state, and dropped
    other = Progress(tmp, True)
    other.track(_tied_model(), {"inputs": "y"})
    assert other.find(STEPS) is None and not (tmp / "resume").exists()


def test_no_state_is_kept_under_a_launcher_or_for_quantized_weights(tmp_path, monkeypatch, capsys):
    from realign.runs.resume import progress_for

    tmp = tmp_path / ".out.realign-tmp"
    (tmp / "resume").mkdir(parents=True)
    (tmp / "resume" / "state.json").write_text("{}")
    monkeypatch.setenv("WORLD_SIZE", "2")
    launched = progress_for(tmp, quantized=False)
    launched.prepare(fresh=False)
    assert "no resume under accelerate launch" in capsys.readouterr().err and not tmp.exists()
    launched.track(_tied_model(), {})
    model = _tied_model()
    launched.save(1, STEPS, RepairState(model=model, base=None, tokenizer=None), {}, {})
    assert launched.find(STEPS) is None and not tmp.exists()
    monkeypatch.delenv("WORLD_SIZE")
    assert not progress_for(tmp, quantized=True).enabled
    assert progress_for(tmp, quantized=False).enabled
