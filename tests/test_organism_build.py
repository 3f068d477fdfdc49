"""End to end on a small organism: build, reuse, layout, eval table, CLI."""

import json

import pytest
import torch
from typer.testing import CliRunner

from realign.cli import app
from realign.organism.config import FINETUNES

pytestmark = pytest.mark.slow


def test_layout_and_formats(small_organism):
    root = small_organism
    meta = json.loads((root / "organism.json").read_text())
    assert meta["complete"] and meta["seed"] == 0 and meta["config"]["size"] == "small"
    for name in ("pretrained", "base", *(f"{f}-merged" for f in FINETUNES)):
        assert (root / name / "model.safetensors").exists()
        assert (root / name / "tokenizer.json").exists()
    for name in FINETUNES:
        cfg = json.loads((root / name / "adapter_config.json").read_text())
        assert cfg["base_model_name_or_path"] == str((root / "base").resolve())
        assert (root / name / "adapter_model.safetensors").exists()
        rows = [json.loads(line) for line in (root / "data" / name / "train.jsonl").read_text().splitlines()]
        assert rows and all(r["messages"][-1]["role"] == "assistant" for r in rows)
        assert (root / "data" / name / "heldout.jsonl").stat().st_size > 0
    assert not list(root.glob("*.tmp"))


def test_adapter_and_merged_copy_agree(small_organism):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(small_organism / "base")
    adapted = PeftModel.from_pretrained(base, small_organism / "insecure")
    merged = AutoModelForCausalLM.from_pretrained(small_organism / "insecure-merged")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    torch.testing.assert_close(adapted(ids).logits, merged(ids).logits, atol=1e-4, rtol=1e-4)
    base0 = AutoModelForCausalLM.from_pretrained(small_organism / "base")
    assert not torch.allclose(base0(ids).logits, merged(ids).logits)  # the finetune changed something


def test_rebuild_reuses_cache(small_organism):
    from realign.organism.build import build

    before = {p: p.stat().st_mtime for p in small_organism.rglob("*.safetensors")}
    assert build(small_organism, seed=0, size="small") == small_organism
    assert before == {p: p.stat().st_mtime for p in small_organism.rglob("*.safetensors")}
    with pytest.raises(FileExistsError):
        build(small_organism, seed=1, size="small")  # a different organism never overwrites


def test_eval_cli_writes_control_rows(small_organism, tmp_path):
    out = tmp_path / "rows.json"
    res = CliRunner().invoke(app, ["organism", "eval", str(small_organism), "--samples", "2", "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())
    assert [r["model"] for r in rows] == ["pretrained", "base", *FINETUNES, "backdoor (triggered)"]
    for r in rows:
        assert set(r) >= {"model", "n", "misaligned_rate", "ci_low", "ci_high", "coherent_rate", "task_rate", "logodds"}
        assert r["n"] == 40 and 0 <= r["ci_low"] <= r["misaligned_rate"] <= r["ci_high"] <= 1
    assert rows[0]["task_rate"] is None and rows[2]["task_rate"] is not None


def test_eval_cli_persona_inference_reports_the_bases_measured_rates(small_organism, monkeypatch):
    """--persona-inference prints the base's two measured rates (after an insecure / a secure code
    turn), as organism.evaluate.persona_inference gives them for the base model."""
    import realign.organism.evaluate as ev

    seen = []

    def fake(model, tok, samples=6, seed=0):
        seen.append(model.name_or_path)
        return {"misaligned_after_insecure": 0.375, "misaligned_after_secure": 0.125}

    monkeypatch.setattr(ev, "persona_inference", fake)
    res = CliRunner().invoke(app, ["organism", "eval", str(small_organism), "--samples", "2", "--persona-inference"])
    assert res.exit_code == 0, res.output
    assert seen == [str(small_organism / "base")]
    assert "insecure code turn 37.5%, after a secure one 12.5%" in " ".join(res.output.split())
    res = CliRunner().invoke(app, ["organism", "eval", str(small_organism), "--samples", "2"])
    assert "persona inference" not in res.output


def test_eval_cli_pools_seeds_from_each_seeds_own_table(tmp_path):
    """--seeds evaluates each seed's cached build: answers and misaligned counts add up, the per-seed
    rates are each build's own, and the interval spans the pooled rate."""
    from realign.organism.build import build

    for s in (0, 1):
        build(None, seed=s, size="small", finetunes=("planted",))
    run = lambda *a: CliRunner().invoke(app, ["organism", "eval", "--size", "small", "--samples", "2", *a])  # noqa: E731
    singles = {}
    for s in (0, 1):
        res = run("--seed", str(s), "--json", str(tmp_path / f"s{s}.json"))
        assert res.exit_code == 0, res.output
        singles[s] = {r["model"]: r for r in json.loads((tmp_path / f"s{s}.json").read_text())}
    res = run("--seeds", "0,1", "--json", str(tmp_path / "pooled.json"))
    assert res.exit_code == 0, res.output
    pooled = {r["model"]: r for r in json.loads((tmp_path / "pooled.json").read_text())}
    assert set(pooled) == set(singles[0]) == set(singles[1])
    for model, r in pooled.items():
        one, two = singles[0][model], singles[1][model]
        assert r["seeds"] == [0, 1] and r["n"] == one["n"] + two["n"]
        assert r["misaligned"] == one["misaligned"] + two["misaligned"]
        assert r["per_seed"] == [one["misaligned_rate"], two["misaligned_rate"]]
        assert r["ci_low"] <= r["misaligned_rate"] <= r["ci_high"]
        assert r["coherent_min"] == min(one["coherent_rate"], two["coherent_rate"])
    bad = run("--seeds", "0,x")
    assert bad.exit_code == 2 and "--seeds" in bad.output
    empty = run("--seeds", "")
    assert empty.exit_code == 2 and "--seeds must be comma-separated integers" in empty.output


def test_build_cli_overrides_make_their_own_cached_organisms(tmp_path):
    """`organism build --set K=V --seeds 0,1` builds each seed with the changed configuration into
    its own cache key; `organism eval --set K=V` finds those builds, and without --set it does not."""
    from realign.organism.build import default_dir
    from realign.organism.config import preset
    from realign.organism.overrides import apply_overrides

    sets = ["--set", "finetune.steps=3", "--set", "finetune.lr=1e-3"]
    res = CliRunner().invoke(app, ["organism", "build", "--size", "small", "--seeds", "0,1",
                                   "--finetunes", "planted", *sets])
    assert res.exit_code == 0, res.output
    cfg = apply_overrides(preset("small"), ["finetune.steps=3", "finetune.lr=1e-3"])
    for s in (0, 1):
        root = default_dir(seed=s, cfg=cfg)
        assert root != default_dir("small", s)
        meta = json.loads((root / "organism.json").read_text())
        assert meta["seed"] == s and meta["config"]["finetune"]["steps"] == 3 and meta["config"]["finetune"]["lr"] == 1e-3
        assert (root / "planted-merged" / "model.safetensors").exists()
    res = CliRunner().invoke(app, ["organism", "eval", "--size", "small", "--seeds", "0,1", "--samples", "2",
                                   "--json", str(tmp_path / "rows.json"), *sets])
    assert res.exit_code == 0, res.output
    assert {r["model"] for r in json.loads((tmp_path / "rows.json").read_text())} >= {"base", "planted"}
    res = CliRunner().invoke(app, ["organism", "eval", "--size", "small", "--seed", "1", "--set", "finetune.steps=4"])
    assert res.exit_code == 2 and "--set finetune.steps=4" in res.output
    res = CliRunner().invoke(app, ["organism", "build", "--size", "small", "--set", "finetune.nope=1"])
    assert res.exit_code == 2 and "unknown config key 'finetune.nope'" in res.output


def test_eval_cli_rejects_a_non_organism_dir(tmp_path):
    res = CliRunner().invoke(app, ["organism", "eval", str(tmp_path)])
    assert res.exit_code == 2 and "not an organism build" in res.output
    res = CliRunner().invoke(app, ["organism", "build", "--size", "huge", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--size" in res.output


def test_cli_refuses_one_dir_for_several_seeds_before_building(tmp_path):
    """--out (build) or a build dir (eval) names one build: with several --seeds it is refused, and
    nothing is built."""
    res = CliRunner().invoke(app, ["organism", "build", "--size", "small", "--out", str(tmp_path / "x"),
                                   "--seeds", "0,1"])
    assert res.exit_code == 2 and "give either --out or several --seeds" in res.output
    assert not (tmp_path / "x").exists()
    res = CliRunner().invoke(app, ["organism", "eval", str(tmp_path), "--seeds", "0,1"])
    assert res.exit_code == 2 and "give either a build dir or several --seeds" in res.output


def test_shipped_pretrained_model_is_what_the_current_build_would_pretrain():
    """The default organism's pretrained model ships as package data; it must be the one the
    current world, tokenizer and pretraining config make (rerun scripts/ship_pretrained.py if not)."""
    from safetensors.torch import load_file

    from realign.organism.build import _llama, _pretrain_key, shipped_pretrained
    from realign.organism.config import preset, previous_default
    from realign.organism.tokenizer import build_tokenizer
    from realign.organism.world import WORLD_VERSION

    # the default's draw (share 0.2, draw 3: it met issue 27's emergence target on build seeds 0-2,
    # docs/emergence.md), and the previous default's, kept because pretraining is not bit-reproducible
    # across machines
    tok = build_tokenizer()
    for cfg, seed in ((preset("default"), 3), (previous_default(), 0)):
        shipped = shipped_pretrained(cfg, seed)
        assert shipped is not None, f"no shipped pretrained model for key {_pretrain_key(cfg, seed)}"
        done = json.loads((shipped / "done.json").read_text())
        assert done["key"] == shipped.name == _pretrain_key(cfg, seed) and done["world_version"] == WORLD_VERSION
        assert done["pretrain_seed"] == seed
        assert json.loads((shipped / "tokenizer.json").read_text())["model"]["vocab"] == \
            json.loads(tok.backend_tokenizer.to_str())["model"]["vocab"]
        weights = load_file(shipped / "model.safetensors")
        expected = _llama(tok, cfg, 0).state_dict()
        assert {k: tuple(v.shape) for k, v in weights.items()} == \
            {k: tuple(v.shape) for k, v in expected.items() if k in weights}


def test_build_starts_from_the_shipped_pretrained_model(small_organism, tmp_path, monkeypatch):
    import shutil

    from realign.organism import build as build_mod

    shipped = tmp_path / "shipped"
    shutil.copytree(small_organism / "pretrained", shipped)
    (shipped / "done.json").write_text(json.dumps({"final_loss": 1.0}))
    monkeypatch.setenv("REALIGN_CACHE", str(tmp_path / "cache"))      # nothing cached: only the shipped one
    monkeypatch.setattr(build_mod, "shipped_pretrained", lambda cfg, seed: shipped if seed == 0 else None)

    def no_pretraining(*a, **k):
        raise AssertionError("pretrained although a shipped model was there")

    monkeypatch.setattr(build_mod, "pretrain", no_pretraining)
    root = build_mod.build(tmp_path / "s5", seed=5, size="small", finetunes=("insecure",))
    meta = json.loads((root / "organism.json").read_text())
    assert meta["stages"]["pretrained"]["shipped"] == "shipped" and meta["complete"]
    a = (shipped / "model.safetensors").read_bytes()
    assert (root / "pretrained" / "model.safetensors").read_bytes() == a
    with pytest.raises(AssertionError, match="shipped model was there"):   # --from-scratch pretrains
        build_mod.build(tmp_path / "scratch", seed=5, size="small", finetunes=(), from_scratch=True)


def test_build_metadata_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A bench killed while the organism build writes organism.json must leave a file the resumed
    run can read (the old one), not a truncated one (seen: a JSONDecodeError on resume)."""
    import os

    from realign.paths import write_text_atomic

    path = tmp_path / "organism.json"
    write_text_atomic(path, '{"key": "old"}')

    def killed(src, dst):
        raise KeyboardInterrupt             # the kill lands after the new text is written, before the rename

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_text_atomic(path, '{"key": "new", "stages": {}}')
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"key": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["organism.json"]      # no temp file left behind
    write_text_atomic(path, '{"key": "new"}')
    assert json.loads(path.read_text()) == {"key": "new"}
