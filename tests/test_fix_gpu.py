"""The GPU path of `realign fix`: --backend vllm (with a stand-in vllm), 4/8-bit and --device-map wiring.

No GPU here: tests/fake_vllm.py plays vLLM (it loads weights from disk as vLLM does and fails any
generation that does not go through it); quantization is checked for its refusals.
"""

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from realign.cli import app

runner = CliRunner()
FAST = ["--samples", "1", "--max-new-tokens", "16"]


def _one_error(res, msg):
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and msg in errors[0] and "Traceback" not in res.output, res.output


@pytest.fixture
def cuda_for_vllm(monkeypatch):
    """vLLM's CUDA requirement, met for the stand-in (realign's own models stay on the CPU)."""
    monkeypatch.setattr("realign.generation.vllm_engine.cuda_available", lambda: True)


class ParityJudge:
    """Misaligned exactly when an answer has an odd length: sampled answers of any model then give
    the (aligned base, misaligned finetune) pairs that dpo needs, whatever the model."""

    name = "parity"

    def judge(self, items, progress=None):
        from realign.evals.judges import Judgement

        return [Judgement(0.0 if len(it.answer) % 2 else 100.0, 100.0) for it in items]


@pytest.mark.slow
def test_every_generation_of_a_fix_goes_through_vllm(small_organism, tmp_path, monkeypatch, cuda_for_vllm):
    from fake_vllm import install

    from realign.evals.judges import JUDGES

    vllm = install(monkeypatch)
    monkeypatch.setitem(JUDGES, "parity", ParityJudge)
    monkeypatch.setenv("REALIGN_CACHE", str(tmp_path / "cache"))
    task = tmp_path / "task.jsonl"           # 8 held-out task examples keep the task metric quick
    task.write_text("".join((small_organism / "data/planted/heldout.jsonl").read_text().splitlines(True)[:8]))
    out = tmp_path / "repaired"
    base, adapter = str(small_organism / "base"), str(small_organism / "planted")
    res = runner.invoke(app, ["fix", adapter, "--recipe", "merge+dpo", "--set", "merge.alpha=0.5",
                              "--set", "dpo.steps=2", "--set", "dpo.samples=1", "--set", "dpo.task_anchors=4",
                              "--judge", "parity", "--task-data", str(task), "--backend", "vllm",
                              "--out", str(out), *FAST])
    assert res.exit_code == 0, res.output
    assert vllm.bypassed == []                      # no transformers generate outside the backend
    meta = json.loads((out / "realign.json").read_text())
    assert meta["history"][1]["step"] == "dpo" and meta["history"][1]["pairs"] > 0
    scratch = tmp_path / ".repaired.realign-vllm"
    calls = [("scratch:" + Path(m).name if Path(m).parent == scratch else m, a, n) for m, a, n in vllm.calls]
    assert calls == [
        (base, None, 20), (base, None, 8),          # evaluation of the base: answers, then the task rate
        (base, adapter, 20), (base, adapter, 8),    # the LoRA finetune: its base's engine, adapter per request
        (base, None, 40),                           # probes: base answers
        ("scratch:model-1", None, 40),              # probes: the merged model (changed in place, so saved)
        (base, None, 4),                            # dpo task anchors: base answers
        ("scratch:model-2", None, 20), ("scratch:model-2", None, 8),   # the repaired model, saved again
    ]
    assert vllm.engines[0]["enable_lora"] and vllm.engines[0]["max_lora_rank"] == 8
    assert not any(e["enable_lora"] for e in vllm.engines[1:])
    # one engine at a time, each shut down, the scratch copies gone
    assert vllm.most_live == 1 and vllm.live == 0 and vllm.cleanups >= len(vllm.engines)
    assert not scratch.exists()
    assert meta["evaluation"]["cached"] == [] and set(meta["metrics"]) == {"base", "finetune", "repaired"}


def test_vllm_backend_answers_from_the_weights_of_each_model_object(tmp_path, monkeypatch, cuda_for_vllm):
    """Greedy answers through vLLM equal transformers' on the same weights: the base and a LoRA
    finetune from the user's files, a model only in memory, and that model after an in-place edit."""
    import torch
    from fake_vllm import install
    from peft import LoraConfig, get_peft_model
    from tiny_models import save_tiny
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from realign.generation.hf import generate
    from realign.generation import VLLMBackend

    base_dir = save_tiny(tmp_path / "base")
    tok = AutoTokenizer.from_pretrained(base_dir)
    torch.manual_seed(1)
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                          LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    finetune = lora.merge_and_unload().eval()
    edited = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    with torch.no_grad():
        edited.lm_head.weight.mul_(-1.0)
    convs = [[{"role": "user", "content": q}] for q in ("hello, how are you?", "def f(x):", "the quick brown fox")]
    vllm = install(monkeypatch)
    backend = VLLMBackend(tmp_path / "scratch")
    backend.register(base, str(base_dir))
    backend.register(finetune, str(base_dir), adapter=str(tmp_path / "adapter"))
    kw = dict(samples=1, max_new_tokens=12, temperature=0)

    def hf(model):
        vllm_inside = __import__("fake_vllm")._inside
        vllm_inside.flag = True                 # the guard in fake_vllm lets this reference run through
        try:
            return generate(model, tok, convs, **kw)
        finally:
            vllm_inside.flag = False

    expected = [hf(model) for model in (base, finetune, edited)]
    assert expected[1] != expected[0] and expected[2] != expected[0]
    assert [backend(model, tok, convs, **kw) for model in (base, finetune, edited)] == expected
    with torch.no_grad():
        edited.lm_head.weight.mul_(-1.0)         # back to the base's weights, in place
    backend.forget(edited)
    assert backend(edited, tok, convs, **kw) == expected[0]
    assert [c[1] for c in vllm.calls] == [None, str(tmp_path / "adapter"), None, None]
    backend.close()
    assert vllm.live == 0 and not (tmp_path / "scratch").exists()


def test_vllm_not_installed_is_one_line(tmp_path, monkeypatch):
    from tiny_models import save_tiny

    monkeypatch.setitem(sys.modules, "vllm", None)          # `import vllm` raises ImportError
    model = save_tiny(tmp_path / "m")
    res = runner.invoke(app, ["fix", str(model), "--base", str(model), "--recipe", "dpo", "--backend", "vllm",
                              "--judge", "oracle", "--out", str(tmp_path / "o")])
    _one_error(res, 'the vllm backend needs vLLM: pip install "realign[vllm]"')


def test_vllm_without_cuda_is_one_line(tmp_path, monkeypatch):
    from fake_vllm import install
    from tiny_models import save_tiny

    install(monkeypatch)
    monkeypatch.setattr("realign.generation.vllm_engine.cuda_available", lambda: False)
    model = save_tiny(tmp_path / "m")
    res = runner.invoke(app, ["fix", str(model), "--base", str(model), "--recipe", "dpo", "--backend", "vllm",
                              "--judge", "oracle", "--out", str(tmp_path / "o")])
    _one_error(res, "the vllm backend needs a CUDA GPU")
    res = runner.invoke(app, ["fix", str(model), "--base", str(model), "--recipe", "dpo", "--backend", "vlm",
                              "--judge", "oracle", "--out", str(tmp_path / "o")])
    _one_error(res, "--backend must be one of hf, vllm")


def test_quantized_loads_refuse_weight_rewriting_steps(tmp_path):
    from tiny_models import save_tiny

    model = str(save_tiny(tmp_path / "m"))
    args = ["fix", model, "--base", model, "--judge", "oracle", "--out", str(tmp_path / "o")]
    for recipe, step in (("merge", "step 1 (merge)"), ("dpo+steer", "step 2 (steer)"), ("freeze+dpo", "step 1 (freeze)")):
        res = runner.invoke(app, [*args, "--recipe", recipe, "--load-in-4bit"])
        _one_error(res, f"{step} rewrites weights, which 4/8-bit (bitsandbytes) weights cannot take; load in bf16")
    res = runner.invoke(app, [*args, "--recipe", "merge", "--load-in-8bit"])
    _one_error(res, "step 1 (merge) rewrites weights")
    res = runner.invoke(app, [*args, "--recipe", "dpo", "--load-in-4bit", "--save-as", "adapter"])
    _one_error(res, "--save-as adapter reads the change off full-precision weights")
    # dpo/mix train a LoRA on the quantized model (QLoRA): allowed, and on a CPU bitsandbytes says no
    for recipe in ("dpo", "mix"):
        res = runner.invoke(app, [*args, "--recipe", recipe, "--load-in-4bit"])
        _one_error(res, "--load-in-4bit/--load-in-8bit need a CUDA GPU (bitsandbytes)")
    res = runner.invoke(app, [*args, "--recipe", "dpo", "--load-in-4bit", "--load-in-8bit"])
    _one_error(res, "choose one of --load-in-4bit and --load-in-8bit")
    assert not (tmp_path / "o").exists()


def test_fix_options_reach_the_loader(tmp_path, monkeypatch):
    seen = {}

    def fake_run_fix(checkpoint, base, recipe, overrides, out, opts):
        seen["opts"] = opts

    monkeypatch.setattr("realign.runs.fix.run_fix", fake_run_fix)
    res = runner.invoke(app, ["fix", "ckpt", "--recipe", "dpo", "--out", str(tmp_path / "o"), "--backend", "vllm",
                              "--load-in-4bit", "--device-map", "auto", "--dtype", "bfloat16"])
    assert res.exit_code == 0, res.output          # a run that returns nothing is another rank: silent
    opts = seen["opts"]
    assert opts.backend == "vllm" and opts.load.load_in_4bit and not opts.load.load_in_8bit
    assert opts.load.device_map == "auto" and opts.load.dtype == "bfloat16" and opts.load.quantized


def test_device_map_goes_to_from_pretrained(tmp_path, monkeypatch):
    from tiny_models import save_tiny
    from transformers import AutoModelForCausalLM

    from realign.model_io.checkpoint import LoadOptions, load_model

    calls = []
    original = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, ref, **kw):
        calls.append(kw)
        return original(cls, ref, **kw)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    path = str(save_tiny(tmp_path / "m"))
    model = load_model(path, LoadOptions(device_map="auto"))
    assert calls[-1]["device_map"] == "auto" and next(model.parameters()).device.type == "cpu"
    load_model(path, LoadOptions())
    assert "device_map" not in calls[-1]           # without it the model is moved to the device as before


def test_launch_modes_fix_cannot_use_are_refused_before_loading(tmp_path, monkeypatch):
    args = ["fix", str(tmp_path / "not-loaded"), "--recipe", "dpo", "--judge", "oracle", "--out", str(tmp_path / "o")]
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    _one_error(runner.invoke(app, args), "fix does not support DeepSpeed: launch with configs/accelerate/fsdp.yaml")
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setenv("WORLD_SIZE", "2")       # as under `accelerate launch --num_processes 2`
    _one_error(runner.invoke(app, [*args, "--backend", "vllm"]), "--backend vllm runs in a single process")


def test_launched_ranks_load_on_their_gpu_for_ddp_and_into_cpu_memory_for_fsdp(monkeypatch):
    """Under DDP each rank holds a whole copy on its own GPU; under FSDP a whole copy per GPU is what
    sharding is there to avoid, so models wait in CPU memory until the trainer shards them."""
    import torch

    from realign.distributed import local_device, sharded

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert local_device() is None and not sharded()            # not launched: the usual device rule
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert local_device() == "cuda:1" and not sharded()
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert local_device() == "cpu" and sharded()
