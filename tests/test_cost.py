"""The cost model (realign.cost) and `realign fix --dry-run`.

Tolerances: on an anchor's own model (SmolLM2-135M, CPU, fp32) the prediction reproduces each
fitted anchor's step seconds within 15% (two seeds of one repair share a coefficient: merge 174 and
208 s, dpo 1,978 and 2,195 s) and its peak RSS within 10%.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from realign.cli import app
from realign.cost import (GIB, MIB, ModelShape, Setting, anchor_residuals, count_parameters, load_cost_model,
                          predict, step_memory, step_work)
from realign.repairs import load_all

ROOT = Path(__file__).resolve().parent.parent
SECONDS_TOLERANCE, PEAK_TOLERANCE = 0.15, 0.10
runner = CliRunner()


@pytest.fixture(scope="module")
def cm():
    return load_cost_model()


def _shape(cm, **change) -> ModelShape:
    return dataclasses.replace(cm.reference, **change)


# ------------------------------------------------------------------------------ the anchors

def test_each_fitted_anchor_is_reproduced_on_its_own_model(cm):
    checked = 0
    for a, seconds, peak_mib in anchor_residuals(cm):
        if a.use != "fit":
            continue
        assert abs(seconds - a.seconds) <= SECONDS_TOLERANCE * a.seconds, (a.id, seconds, a.seconds)
        assert abs(peak_mib - a.peak_mb) <= PEAK_TOLERANCE * a.peak_mb, (a.id, peak_mib, a.peak_mb)
        checked += 1
    assert checked == 7      # merge ×2, ties, freeze, steer, dpo ×2


def test_predicted_passes_are_the_passes_each_anchor_recorded(cm):
    for a in cm.anchors:
        if a.repair in ("merge", "freeze", "steer", "dpo", "mix", "harden") and a.use != "superseded":
            assert step_work(a.repair, a.params, cm, a.probes_built).passes == a.passes, a.id


def test_anchor_figures_are_those_of_their_realign_json(cm):
    """Where the bench cells are on this machine (runs/ is not committed; results/ is), the YAML copies them exactly."""
    seen = 0
    for a in cm.anchors:
        path = ROOT / a.source.split(" ")[0]
        if not (a.source.startswith(("runs/", "results/")) and path.exists()):
            continue
        meta = json.loads(path.read_text())
        phase = a.source.split("(")[1].rstrip(")") if "(" in a.source else \
            next(k for k in meta["timings"] if k.startswith("step1_"))
        assert meta["timings"][phase] == a.seconds, a.id
        assert meta["peak_memory_mb"][phase]["rss"] == a.peak_mb, a.id
        step = int(phase[4]) - 1
        assert meta["history"][step]["passes"] == a.passes, a.id
        seen += 1
    if not seen:
        pytest.skip("the bench cells (runs/) are not on this machine")


def test_parameters_are_counted_from_the_config_as_the_model_has_them():
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import tiny_model

    for arch in ("llama", "qwen2", "mistral"):
        model = tiny_model(arch, hidden=32, layers=3, vocab=400)
        assert count_parameters(model.config.to_dict()) == sum(p.numel() for p in model.parameters()), arch
    smollm2 = load_cost_model().reference
    assert smollm2.params == 134_515_008          # its model.safetensors: 538,090,408 bytes of fp32 + header


# ------------------------------------------------------------------------------ scaling

def test_memory_grows_with_parameters_as_the_weight_term_says(cm):
    small, large = _shape(cm, params=8 * 10**9), _shape(cm, params=16 * 10**9)
    for key, p in (("merge", {}), ("freeze", {}), ("dpo", {"micro_batch_size": 2})):
        a = step_memory(key, p, small, "bfloat16", cm, host=False)
        b = step_memory(key, p, large, "bfloat16", cm, host=False)
        assert b.weights_high == pytest.approx(2 * a.weights_high)      # doubling P doubles the weight term
        assert b.high - a.high == pytest.approx(a.weights_high)          # and nothing else moves
        assert 1.5 < b.high / a.high <= 2.0


def test_training_memory_follows_the_micro_batch_and_checkpointing_not_the_vocabulary(cm):
    v1, v2 = _shape(cm, vocab=49_152), _shape(cm, vocab=262_144)     # same parameters: only the vocabulary
    plain = {"micro_batch_size": 2, "gradient_checkpointing": False}
    dpo1 = step_memory("dpo", plain, v1, "float32", cm, host=True)
    assert dpo1 == step_memory("dpo", plain, v2, "float32", cm, host=True)      # chunked LM head: no logits kept
    assert step_memory("merge", {}, v1, "float32", cm, True) == step_memory("merge", {}, v2, "float32", cm, True)
    # micro-batches: twice the sequences in flight, twice the activation term
    one = step_memory("dpo", {**plain, "micro_batch_size": 1}, v1, "float32", cm, host=True)
    st = cm.structure
    assert dpo1.high - one.high == pytest.approx(cm.activation_scale * 2 * st["dpo_sequence_tokens"]
                                                 * 17 * 30 * 576 * 4)
    # checkpointing: each layer keeps its input, one layer its whole activations: (30 + 17) / (17 * 30)
    ckpt = step_memory("dpo", {**plain, "gradient_checkpointing": True}, v1, "float32", cm, host=True)
    assert ckpt.layer_activations == pytest.approx(dpo1.layer_activations * (30 + 17) / (17 * 30))
    # "auto" (the default) checkpoints SmolLM2 (135M parameters), not a 10M model
    assert step_memory("dpo", {"micro_batch_size": 2}, v1, "float32", cm, host=True) == ckpt
    small = _shape(cm, params=10**7)
    assert step_memory("dpo", {"micro_batch_size": 2}, small, "float32", cm, host=True) == \
        step_memory("dpo", plain, small, "float32", cm, host=True)
    # harden holds one micro-batch of pairs in flight, never its whole batch (capped at the batch)
    def harden(**p):
        return step_memory("harden", p, v1, "float32", cm, host=True).layer_activations
    assert harden(batch_size=8, micro_batch_size=4) == harden(batch_size=32, micro_batch_size=4)
    assert harden(batch_size=8, micro_batch_size=4) == pytest.approx(2 * harden(batch_size=8, micro_batch_size=2))
    assert harden(batch_size=2, micro_batch_size=4) == harden(batch_size=2, micro_batch_size=2)


def test_time_grows_with_parameters_and_passes(cm):
    steps = [{"step": "merge", "params": {"alpha": "auto", "steps": 5}}]
    for setting in (Setting("cpu", 0, "float32"), Setting("gpu", 1, "bfloat16")):
        a = predict(steps, _shape(cm, params=10**9), setting, cm)
        b = predict(steps, _shape(cm, params=2 * 10**9), setting, cm)
        assert b.seconds == pytest.approx(2 * a.seconds)
    more = [{"step": "merge", "params": {"alpha": "auto", "steps": 10}}]     # 14 scoring passes instead of 9
    cpu = Setting("cpu", 0, "float32")
    assert predict(more, cm.reference, cpu, cm).seconds == pytest.approx(
        predict(steps, cm.reference, cpu, cm).seconds * 14 / 9)


def test_probes_are_generated_once_per_recipe(cm):
    steps = [{"step": "mix", "params": {}}, {"step": "dpo", "params": {}}]
    pred = predict(steps, cm.reference, Setting(), cm)
    assert pred.steps[0].passes["generation"] == 2 and pred.steps[1].passes["generation"] == 1   # task anchors only


def test_gpu_figures_say_they_are_assumed_and_70b_needs_several_gpus(cm):
    big = ModelShape("70B", 70_553_706_496, 80, 8192, 128_256, "bfloat16")
    steps = [{"step": "merge", "params": {"alpha": "auto"}}]
    one = predict(steps, big, Setting("gpu", 1, "bfloat16"), cm)
    eight = predict(steps, big, Setting("gpu", 8, "bfloat16"), cm)
    assert one.fits is False and eight.fits is True and "device-map" in eight.layout
    assert eight.peak.high == pytest.approx(one.peak.high - one.peak.weights_high * 7 / 8)
    assert any("time ASSUMED" in n for n in one.notes) and any("ASSUMED" in n and "H100" in n for n in one.notes)
    assert not any("ASSUMED" in n for n in predict(steps, cm.reference, Setting(), cm).notes)


def test_a_repair_without_anchor_says_its_coefficients_are_borrowed(cm):
    pred = predict([{"step": "mix", "params": {}}], cm.reference, Setting(), cm)
    assert "borrowed from dpo" in pred.steps[0].basis


def test_unknown_step_or_dtype_is_an_error(cm):
    with pytest.raises(ValueError, match="no cost model for step"):
        predict([{"step": "prune", "params": {}}], cm.reference, Setting(), cm)
    with pytest.raises(ValueError, match="unknown dtype"):
        predict([{"step": "merge", "params": {}}], cm.reference, Setting("cpu", 0, "int3"), cm)


# ------------------------------------------------------------------------------ fix --dry-run

def _config_only(path: Path) -> Path:
    """A model dir with config.json and nothing else: nothing to load."""
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import tiny_model

    path.mkdir(parents=True)
    tiny_model("qwen2", hidden=32, layers=2, vocab=400).config.save_pretrained(path)
    assert sorted(p.name for p in path.iterdir()) == ["config.json"]
    return path


def test_dry_run_prints_the_table_and_writes_nothing(tmp_path):
    model, out = _config_only(tmp_path / "ft"), tmp_path / "out"
    res = runner.invoke(app, ["fix", str(model), "--recipe", "freeze+dpo", "--out", str(out), "--dry-run"])
    assert res.exit_code == 0, res.output
    for text in ("| 1 freeze | scoring 12, backward 2 |", "| 2 dpo | train_steps 100, generation 3 |",
                 "total (peak: largest step)", "CPU (2 threads): peak / time", "8 GPUs: peak / time",
                 "no weights loaded", "time ASSUMED"):
        assert text in res.output, text
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_dry_run_opens_no_weight_file(tmp_path, monkeypatch):
    import io
    import sys

    import safetensors
    import transformers

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import save_tiny

    model = save_tiny(tmp_path / "ft")
    assert list(model.glob("*.safetensors"))
    opened: list[str] = []
    real_open = io.open

    def recording_open(file, *args, **kw):
        opened.append(str(file))
        return real_open(file, *args, **kw)

    def refuse(*args, **kw):
        raise AssertionError("a dry run loaded weights")

    monkeypatch.setattr(io, "open", recording_open)
    monkeypatch.setattr("builtins.open", recording_open)
    monkeypatch.setattr(safetensors, "safe_open", refuse)
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(refuse))
    res = runner.invoke(app, ["fix", str(model), "--recipe", "merge", "--out", str(tmp_path / "out"), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "| 1 merge | scoring 9 |" in res.output
    assert str(model / "config.json") in opened
    assert not [f for f in opened if f.endswith((".safetensors", ".bin", ".pt"))]


def test_dry_run_reads_an_adapters_base_config(tmp_path):
    base = _config_only(tmp_path / "base")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base), "r": 8}))
    res = runner.invoke(app, ["fix", str(adapter), "--recipe", "merge", "--out", str(tmp_path / "o"), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert f"from {base}" in res.output.replace("\n", "")


@pytest.mark.parametrize("case, args, message", [
    ("missing", ["/nonexistent/model"], "does not exist"),
    ("bad recipe", ["{model}", "--recipe", "merge+prune"], "prune"),
    ("bad json", ["{bad_json}"], "config.json is not valid JSON"),
    ("no shape", ["{no_shape}"], "config.json lacks what the cost model needs"),
    ("bad override", ["{model}", "--set", "merge.alpha"], "step.param=value"),
])
def test_dry_run_bad_input_is_one_line(tmp_path, case, args, message):
    model = _config_only(tmp_path / "m")
    bad_json, no_shape = tmp_path / "bad", tmp_path / "shapeless"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{not json")
    no_shape.mkdir()
    (no_shape / "config.json").write_text(json.dumps({"model_type": "llama"}))
    args = [a.format(model=model, bad_json=bad_json, no_shape=no_shape) for a in args]
    if "--recipe" not in args:
        args += ["--recipe", "merge"]
    res = runner.invoke(app, ["fix", *args, "--out", str(tmp_path / "o"), "--dry-run"])
    assert res.exit_code == 2, (case, res.output)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], (case, res.output)


# ------------------------------------------------------------------------------ the script and the docs

def _script():
    spec = importlib.util.spec_from_file_location("cost_table", ROOT / "scripts" / "cost_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cost_table_covers_every_recipe_and_size_and_the_docs_show_it():
    from realign.recipe import available_recipes

    script = _script()
    text = script.tables()
    for label in script.SIZES:
        section = text.split(f"#### {label}")[1].split("####")[0]
        for recipe in available_recipes():
            assert f"\n| {recipe} |" in section, (label, recipe)
    assert "CPU (2 threads) fp32" in text.split("#### 8B")[0] and "CPU" not in text.split("#### 8B")[1].split("####")[0]
    doc = (ROOT / "docs" / "cost.md").read_text(encoding="utf-8")
    generated = doc.split(script.START)[1].split(script.END)[0].strip()
    assert generated == text.strip(), "docs/cost.md is stale: python scripts/cost_table.py --update docs/cost.md"


def test_cost_table_sizes_are_the_public_models_parameter_counts():
    sizes = {label: count_parameters(cfg) for label, cfg in _script().SIZES.items()}
    assert [round(n / 1e9, 2) for n in sizes.values()] == [0.49, 8.03, 70.55]


def test_gigabytes_are_gib():
    assert GIB == 1024 * MIB


@pytest.mark.parametrize("name", sorted(load_all()))
def test_a_step_given_no_params_is_predicted_as_its_repair_defaults(cm, name):
    """The cost model fills a missing parameter with a literal (anchors and partial dicts give few);
    those literals must be the repair's own Params defaults, or a default changed in the repair
    silently leaves predictions on the old one. Every registered repair is checked, so a new one
    without a cost model fails here too."""
    from realign.cost import _needs_probes, repair_key

    full = dataclasses.asdict(load_all()[name].Params())
    shape = _shape(cm)
    for probes_built in (False, True):
        assert step_work(name, {}, cm, probes_built) == step_work(name, full, cm, probes_built)
    assert _needs_probes(name, {}) == _needs_probes(name, full)
    assert repair_key(name, {}) == repair_key(name, full)
    for host in (False, True):
        assert step_memory(repair_key(name, full), {}, shape, "float32", cm, host) == \
            step_memory(repair_key(name, full), full, shape, "float32", cm, host)


def test_harden_rollouts_are_a_generation_pass_per_step(cm):
    """rollouts: each training step answers `rollouts` prompts under δ, and pairs them with the
    probes' aligned base answers, so the probes are needed even with pairs: references."""
    off = step_work("harden", {"steps": 10}, cm, True)
    on = step_work("harden", {"steps": 10, "rollouts": 8, "rollout_tokens": 32}, cm, True)
    assert on.passes["generation"] - off.passes.get("generation", 0) == 10
    assert on.generated_tokens - off.generated_tokens == 10 * 8 * 32
    assert on.generated_sequences - off.generated_sequences == 80
    refs = dict(pairs="references", steps=10)
    assert "generation" not in step_work("harden", refs, cm, False).passes
    assert step_work("harden", {**refs, "rollouts": 8}, cm, False).passes["generation"] == 2 + 10


@pytest.mark.parametrize("name", ["dpo", "harden"])
def test_flagged_pairs_are_one_generation_pass_of_base_answers(cm, name):
    """flagged_pairs: the base answers the flagged training prompts (2 samples each) once."""
    off = step_work(name, {"steps": 10}, cm, True)
    on = step_work(name, {"steps": 10, "flagged_pairs": 16}, cm, True)
    assert on.passes["generation"] - off.passes.get("generation", 0) == 1
    assert on.generated_sequences - off.generated_sequences == 32
