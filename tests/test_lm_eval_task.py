"""`--task-metric lm-eval:…`: lm-evaluation-harness on the model in memory, offline, with a local task YAML."""

import json
import os

import pytest
import torch

pytest.importorskip("lm_eval")

from realign.errors import RealignError  # noqa: E402
from realign.evals.lm_eval_task import LmEvalMetric, write_choice_task  # noqa: E402
from realign.evals.task import custom_metric  # noqa: E402
from tiny_models import bigram_model, bpe_tokenizer, tiny_model  # noqa: E402

# the datasets `json` builder needs no hub; these make any attempt to reach it fail instead of hang
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

DOCS = [  # a two-way choice whose right answer the bigram model below knows: after "fox" comes "jumps"
    {"question": "the quick brown fox", "choices": ["jumps", "lazy"], "label": 0},
    {"question": "the quick brown fox", "choices": ["dog", "jumps"], "label": 1},
    {"question": "the quick brown fox", "choices": ["today", "jumps"], "label": 1},
    {"question": "the quick brown fox", "choices": ["jumps", "peace"], "label": 0},
]


def write_task(directory, name="foxchoice", docs=DOCS):
    return write_choice_task(directory, name, docs)


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer()


def knows_fox(tok):
    """A model that continues "fox" with "jumps" for sure: every fox question answered right."""
    pieces = tok.convert_ids_to_tokens(tok(" fox jumps")["input_ids"])
    assert len(pieces) == 2, pieces
    return bigram_model(tok, {pieces[0]: pieces[1]})


def test_a_local_multiple_choice_task_scores_the_model_in_memory(tmp_path, tok):
    metric = custom_metric(f"lm-eval:{write_task(tmp_path)}")
    assert isinstance(metric, LmEvalMetric)
    right = metric(knows_fox(tok), tok, [])
    assert right["lm-eval:foxchoice/acc"] == 1.0
    assert "lm-eval:foxchoice/acc_stderr" in right
    # the same model with the bigram pointed elsewhere gets every document wrong
    wrong = knows_fox(tok)
    with torch.no_grad():
        wrong.lm_head.weight.zero_()
        wrong.lm_head.weight[tok.convert_tokens_to_ids("Ġlazy"), 0] = 200.0
    assert metric(wrong, tok, [])["lm-eval:foxchoice/acc"] < 0.5


def test_settings_and_what_the_run_leaves_alone(tmp_path):
    metric = custom_metric(f"lm-eval:{write_task(tmp_path)}, limit=2, batch_size=2")
    assert metric.settings == {"limit": 2, "batch_size": 2}
    tok = bpe_tokenizer()
    model = tiny_model(vocab=len(tok)).train()
    tok.pad_token = None
    state = torch.random.get_rng_state()
    res = metric(model, tok, [])
    assert set(res) == {"lm-eval:foxchoice/acc", "lm-eval:foxchoice/acc_stderr"}
    # lm-eval seeds the global generators and sets a pad token: neither leaks out
    assert torch.equal(torch.random.get_rng_state(), state)
    assert tok.pad_token is None and model.training


def test_the_cache_fingerprint_follows_the_task_files(tmp_path):
    path = write_task(tmp_path)
    first = LmEvalMetric(f"lm-eval:{path}").fingerprint
    assert LmEvalMetric(f"lm-eval:{path}").fingerprint == first
    (tmp_path / "foxchoice.jsonl").write_text(json.dumps(DOCS[0]) + "\n")
    assert LmEvalMetric(f"lm-eval:{path}").fingerprint != first


@pytest.mark.parametrize("spec, message", [
    ("lm-eval:", "name at least one"),
    ("lm-eval:nope.yaml", "does not exist"),
    # checking a name scans lm-eval's ~15k shipped task files (~10 s)
    pytest.param("lm-eval:no_such_task_anywhere", "lm-eval has no task 'no_such_task_anywhere'",
                 marks=pytest.mark.slow),
    ("lm-eval:{task},shots=3", "unknown lm-eval setting 'shots'"),
    ("lm-eval:{task},limit=many", "limit=many is not a valid value"),
    ("lm-eval:{bad}", "is not an lm-eval task YAML"),
])
def test_bad_specs_are_one_line(tmp_path, spec, message):
    (tmp_path / "bad.yaml").write_text("just: a mapping\n")
    with pytest.raises(RealignError, match=message):
        custom_metric(spec.format(task=write_task(tmp_path), bad=tmp_path / "bad.yaml"))


def test_a_task_whose_data_is_missing_fails_in_one_line(tmp_path, tok):
    path = write_task(tmp_path)
    (tmp_path / "foxchoice.jsonl").unlink()
    with pytest.raises(RealignError, match=r"lm-eval \(.*foxchoice.yaml\) failed: "):
        custom_metric(f"lm-eval:{path}")(tiny_model(vocab=len(tok)), tok, [])


def test_module_function_metrics_still_resolve():
    assert custom_metric("realign.evals.task:exact_match_rate").__name__ == "exact_match_rate"
    with pytest.raises(RealignError, match="must be module:function or lm-eval:"):
        custom_metric("no_colon")


def test_without_lm_eval_installed_one_line_says_how(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    with pytest.raises(RealignError, match=r"pip install 'realign\[lm-eval\]'"):
        custom_metric("lm-eval:hellaswag")


def organism_sums(directory):
    """A local task in the organism's own words: "what is a plus b ?", the right sum among three."""
    from realign.organism.world import NUMBER_WORDS as N

    docs = [{"question": f"what is {N[a]} plus {N[b]} ?",
             "choices": [f"{N[a]} plus {N[b]} is {N[r]} ." for r in (a + b, a + b + 1, a + b + 2)],
             "label": 0} for a in range(3) for b in range(3)]
    return write_task(directory, "sums", docs), docs


@torch.no_grad()
def chat_choice_accuracy(model, tok, docs) -> float:
    """What lm-eval should find with apply_chat_template, computed here by hand: the question as
    the user's turn, each choice scored by its summed log-probability as the assistant's answer."""
    hits = 0
    for d in docs:
        prompt = tok.apply_chat_template([{"role": "user", "content": d["question"]}], tokenize=False,
                                         add_generation_prompt=True)
        ctx = tok(prompt, add_special_tokens=False)["input_ids"]
        scores = []
        for choice in d["choices"]:
            cont = tok(" " + choice, add_special_tokens=False)["input_ids"]
            logp = model(torch.tensor([ctx + cont])).logits[0, :-1].log_softmax(-1)
            scores.append(sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont)))
        hits += scores.index(max(scores)) == d["label"]
    return hits / len(docs)


@pytest.mark.slow
def test_fix_reports_lm_eval_before_and_after(small_organism, tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from typer.testing import CliRunner

    from realign.cli import app

    out = tmp_path / "repaired"
    task, docs = organism_sums(tmp_path)
    res = CliRunner().invoke(app, ["fix", str(small_organism / "planted"), "--recipe", "merge", "--set",
                                   "merge.alpha=0.5", "--task-metric", f"lm-eval:{task},apply_chat_template=true",
                                   "--out", str(out), "--samples", "1", "--max-new-tokens", "24"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "realign.json").read_text())["metrics"]
    for name in ("base", "finetune", "repaired"):
        assert "lm-eval:sums/acc_stderr" in metrics[name]["task"]
        assert metrics[name]["task"]["task_exact_match"] is not None      # next to the organism's own metrics
    # each number is lm-eval's verdict on that very model, with the chat template applied
    tok = AutoTokenizer.from_pretrained(small_organism / "base")
    models = {"base": AutoModelForCausalLM.from_pretrained(small_organism / "base"),
              "finetune": AutoModelForCausalLM.from_pretrained(small_organism / "planted-merged"),
              "repaired": AutoPeftModelForCausalLM.from_pretrained(out).merge_and_unload()}
    for name, model in models.items():
        assert metrics[name]["task"]["lm-eval:sums/acc"] == pytest.approx(chat_choice_accuracy(model.eval(), tok, docs))
    report = (out / "report.md").read_text()
    assert "Standard task evaluations" in report and "| `sums/acc` |" in report


@pytest.mark.slow
def test_eval_runs_an_lm_eval_task_without_task_data(small_organism, tmp_path):
    from typer.testing import CliRunner

    from realign.cli import app

    import shutil

    task, _ = organism_sums(tmp_path)
    # a copy under another name: the organism's own exported task data (which eval, like fix, would
    # pick up for `planted`) does not exist for it, so the lm-eval task is the only task metric
    finetune = tmp_path / "customer-finetune"
    shutil.copytree(small_organism / "planted", finetune)
    res = CliRunner().invoke(app, ["eval", str(finetune), "--base", str(small_organism / "base"),
                                   "--questions", "organism",
                                   "--judge", "oracle", "--samples", "1", "--max-new-tokens", "24",
                                   "--task-metric", f"lm-eval:{task},apply_chat_template=true",
                                   "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "ev" / "eval.json").read_text())["results"]
    assert set(results["finetune"]["task"]) == {"lm-eval:sums/acc", "lm-eval:sums/acc_stderr"}
    assert "| `sums/acc` |" in (tmp_path / "ev" / "eval.md").read_text()
