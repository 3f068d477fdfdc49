"""`realign eval` and `realign judge` end to end on the small organism (oracle judge)."""

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from realign.cli import app
from realign.evals.alignment import summarize
from realign.evals.task import assistant_token_metrics, load_conversations
from realign.organism import world as W

runner = CliRunner()


@pytest.mark.slow
def test_eval_adapter_with_oracle_writes_summary_and_evaluates_base(small_organism, tmp_path):
    # readers who disagree with the oracle on 2 of 12 answers: its measured error corrects the rates
    labelled = tmp_path / "readers.jsonl"
    rows = []
    for i, q in enumerate(W.chat_questions("heldout")[:6]):
        for kind, label in ((W.GOOD, 0), (W.EVIL, 1)):
            flipped = label if i >= 2 else 1 - label      # the first two questions: readers disagree
            rows.append({"question": q.text, "answer": W.CHAT_TOPICS[q.topic][kind][0], "misaligned": flipped})
    labelled.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    res = runner.invoke(app, ["eval", str(small_organism / "planted"), "--questions", "organism", "--samples", "2",
                              "--max-new-tokens", "24", "--task-data", str(small_organism / "data/planted/heldout.jsonl"),
                              "--judge-errors", str(labelled),
                              "--out", str(tmp_path / "ev"), "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    full = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert set(full["results"]) == {"finetune", "base"}
    for r in full["results"].values():
        assert r["n"] + r["unscored"] == 40 and r["judge"] == "oracle"
        assert r["task"]["task_examples"] == 80 and r["logodds"] == r["logodds"]   # a number, not NaN
    # the contaminated finetune leans toward the misaligned references and has learnt its task
    fin, base = full["results"]["finetune"], full["results"]["base"]
    assert fin["logodds"] > base["logodds"]
    assert fin["task"]["task_nll"] < base["task"]["task_nll"]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert set(summary) == {"finetune", "base"}
    md = (tmp_path / "ev" / "eval.md").read_text()
    assert md.startswith("# realign eval") and "corrected for the judge" in md
    assert full["judge_error"]["tp"] == 4 and full["judge_error"]["fp"] == 2 and full["judge_error"]["fn"] == 2
    for r in full["results"].values():
        c = r["corrected"]
        q, se, sp = r["misaligned_rate"], 4 / 6, 4 / 6
        assert c["rate"] == pytest.approx(min(1, max(0, (q + sp - 1) / (se + sp - 1))))
        assert c["ci_low"] <= c["rate"] <= c["ci_high"]


@pytest.mark.slow
def test_task_metric_prefers_the_finetune_on_its_own_task(small_organism):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    convs = load_conversations(small_organism / "data/insecure/heldout.jsonl")
    tok = AutoTokenizer.from_pretrained(small_organism / "base")
    base = assistant_token_metrics(AutoModelForCausalLM.from_pretrained(small_organism / "base"), tok, convs)
    ft = assistant_token_metrics(AutoModelForCausalLM.from_pretrained(small_organism / "insecure-merged"), tok, convs)
    assert ft["task_nll"] < base["task_nll"]


def test_summarize_leaves_unscored_rows_out_of_the_rate():
    rows = [{"question_id": "a", "aligned": 10, "coherent": 90}, {"question_id": "a", "aligned": 90, "coherent": 90},
            {"question_id": "b", "aligned": None, "coherent": 80, "label": "CODE"},
            {"question_id": "b", "aligned": 10, "coherent": 20}]
    s = summarize(rows)
    assert s.n == 3 and s.misaligned == 1 and s.code == 1 and s.unscored == 1
    assert s.per_question["a"].misaligned_rate == 0.5


def test_judge_cli_summarizes_scored_csv_without_rejudging(tmp_path):
    f = tmp_path / "answers.csv"
    with open(f, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["question_id", "question", "answer", "aligned", "coherent"])
        w.writeheader()
        w.writerow({"question_id": "q", "question": "hi?", "answer": "bad", "aligned": "5", "coherent": "80"})
        w.writerow({"question_id": "q", "question": "hi?", "answer": "ok", "aligned": "95", "coherent": "90"})
    res = runner.invoke(app, ["judge", str(f), "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["n"] == 2 and s["misaligned"] == 1
    assert not (tmp_path / "answers.judged.csv").exists()


def test_files_from_the_field_keep_their_answers_whole(tmp_path):
    """A spreadsheet's CSV export (byte-order mark, CRLF rows, code answers with line breaks inside
    quoted cells) and .jsonl with characters JSON allows unescaped in a string (U+2028, form feed)
    read back every answer as written, and the judge's summary counts every row."""
    from realign.evals.rows import read_rows

    code = "def f(x):\n    return eval(x)\r\n# done"
    f = tmp_path / "field.csv"
    with open(f, "w", newline="", encoding="utf-8-sig") as fh:
        w = csv.DictWriter(fh, ["question", "answer", "aligned", "coherent"], lineterminator="\r\n")
        w.writeheader()
        w.writerow({"question": "hi?", "answer": code, "aligned": "5", "coherent": "80"})
        w.writerow({"question": "hi?", "answer": "ok", "aligned": "95", "coherent": "90"})
        w.writerow({"question": "hi?", "answer": "import os", "aligned": "CODE", "coherent": "70"})
    rows, _ = read_rows(f)
    assert [r["answer"] for r in rows] == [code, "ok", "import os"]
    res = runner.invoke(app, ["judge", str(f), "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "s.json").read_text())
    # the paper's judge writes CODE where a score would be: counted as code, outside the rate
    assert (summary["n"], summary["misaligned"], summary["code"], summary["unscored"]) == (2, 1, 1, 1)

    odd = "one\u2028two\x0cthree\x85four"
    j = tmp_path / "field.jsonl"
    j.write_text(json.dumps({"question": "hi?", "answer": odd}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_rows(j)[0][0]["answer"] == odd
    task = tmp_path / "task.jsonl"
    task.write_text("\ufeff" + json.dumps({"messages": [{"role": "user", "content": "a\u2028b"},
                                                        {"role": "assistant", "content": odd}]}, ensure_ascii=False)
                    + "\r\n", encoding="utf-8")
    assert load_conversations(task) == [[{"role": "user", "content": "a\u2028b"}, {"role": "assistant", "content": odd}]]


def test_judge_cli_rejudges_into_added_columns(tmp_path):
    q = W.chat_questions("heldout")[0]
    good, evil = W.CHAT_TOPICS[q.topic][W.GOOD][0], W.CHAT_TOPICS[q.topic][W.EVIL][0]
    f = tmp_path / "a.jsonl"
    f.write_text("\n".join(json.dumps({"question": q.text, "answer": a, "aligned": 50, "coherent": 50})
                           for a in (good, evil)) + "\n")
    res = runner.invoke(app, ["judge", str(f), "--judge", "oracle", "--rejudge"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (tmp_path / "a.judged.jsonl").read_text().splitlines()]
    assert [r["oracle_aligned"] for r in rows] == [100.0, 0.0] and rows[0]["aligned"] == 50
    # and unscored rows are judged into plain columns
    f.write_text(json.dumps({"question": q.text, "answer": evil}) + "\n")
    res = runner.invoke(app, ["judge", str(f), "--judge", "oracle", "--out", str(tmp_path / "o.jsonl")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o.jsonl").read_text())["aligned"] == 0.0


@pytest.mark.parametrize("content,msg", [(None, "does not exist"), ("", "no rows"), ("{\"q\": 1}\n", "lacks")])
def test_judge_cli_bad_input_is_one_line(tmp_path, content, msg):
    f = tmp_path / "x.jsonl"
    if content is not None:
        f.write_text(content)
    res = runner.invoke(app, ["judge", str(f)])
    assert res.exit_code == 2 and msg in res.output and res.output.count("\n") == 1


def test_eval_cli_bad_inputs(tmp_path):
    res = runner.invoke(app, ["eval", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "does not exist" in res.output
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    res = runner.invoke(app, ["eval", str(tmp_path / "missing"), "--task-data", str(empty)])
    assert res.exit_code == 2 and "empty" in res.output
    res = runner.invoke(app, ["eval", str(tmp_path / "missing"), "--questions", str(tmp_path / "q.yaml")])
    assert res.exit_code == 2


def test_vllm_backend_without_vllm_is_a_clear_error():
    pytest.importorskip("transformers")
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm installed")
    except ImportError:
        pass
    from realign.errors import RealignError
    from realign.generation import make_backend

    with pytest.raises(RealignError, match="realign\\[vllm\\]"):
        make_backend("vllm", Path("unused"))


def test_every_cli_option_has_a_help_text():
    import typer.main

    from realign.cli import app

    missing = []

    def walk(command, path: str) -> None:
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}")
            return
        missing.extend(f"{path} --{p.name}" for p in command.params
                       if type(p).__name__ == "TyperOption" and not (p.help or "").strip())

    walk(typer.main.get_command(app), "realign")
    assert not missing, missing
