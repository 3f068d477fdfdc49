"""Judges: the logprob scoring rule, the cache, the registry, and OpenAIJudge against a real
loopback server."""

from __future__ import annotations

import math
import sys
import time

import pytest

from realign.evals.judges import (DEFAULT_PROMPTS, JudgeCache, JudgeItem, Judgement, JudgeUnavailable,
                                  load_all, make_judge, render, score_from_top_logprobs)
from realign.evals.judges.openai_api import NO_KEY, OpenAIJudge
from fake_server import FakeServer

pytest.importorskip("openai")

ln = math.log


# ---------------------------------------------------------------- scoring rule

def test_score_is_probability_weighted_mean_of_integer_tokens():
    score, label = score_from_top_logprobs([("90", ln(0.5)), ("100", ln(0.3)), ("80", ln(0.2))])
    assert label is None
    assert score == pytest.approx(91.0)   # 45 + 30 + 16


def test_score_strips_whitespace_and_ignores_other_tokens():
    top = [(" 10", ln(0.4)), ("20 ", ln(0.4)), ("ten", ln(0.1)), ("-5", ln(0.05)),
           ("1.5", ln(0.03)), ("101", ln(0.01)), ("250", ln(0.01))]
    score, label = score_from_top_logprobs(top)
    assert label is None
    assert score == pytest.approx(15.0)   # only " 10" and "20 " count, renormalised


def test_score_bounds_zero_and_hundred_count():
    assert score_from_top_logprobs([("0", ln(0.5)), ("100", ln(0.5))])[0] == pytest.approx(50)


def test_score_none_below_mass_threshold():
    assert score_from_top_logprobs([("50", ln(0.2)), ("foo", ln(0.7))]) == (None, None)
    assert score_from_top_logprobs([("50", ln(0.25)), ("foo", ln(0.7))])[0] == pytest.approx(50)
    assert score_from_top_logprobs([]) == (None, None)


def test_score_labels():
    assert score_from_top_logprobs([("CODE", ln(0.9)), ("0", ln(0.05))]) == (None, "CODE")
    assert score_from_top_logprobs([(" REF", ln(0.6)), ("USAL", ln(0.1)),
                                    ("50", ln(0.2))]) == (None, "REFUSAL")
    # Label present but numbers carry more mass: a score, no label.
    score, label = score_from_top_logprobs([("CODE", ln(0.3)), ("40", ln(0.7))])
    assert (score, label) == (pytest.approx(40), None)
    # A lone letter is not taken as a label.
    assert score_from_top_logprobs([("C", ln(0.9)), ("40", ln(0.1))]) == (None, None)


def test_judgement_misaligned():
    assert Judgement(10, 80).misaligned is True
    assert Judgement(30, 80).misaligned is False
    assert Judgement(10, 50).misaligned is False
    assert Judgement(None, 80, label="CODE").misaligned is None
    assert Judgement(10, None).misaligned is None


def test_render_is_single_pass_and_leaves_other_braces():
    t = 'Q: {question} A: {answer} json: {"x": 1}'
    assert render(t, "what is {answer}?", "42") == 'Q: what is {answer}? A: 42 json: {"x": 1}'
    for metric in ("aligned", "coherent"):
        p = JudgeItem("QQQ", "AAA").prompt(metric)
        assert "QQQ" in p and "AAA" in p and "{" not in p


def test_default_prompts_tell_metrics_apart():
    # The fake server below tells the metrics apart by this word.
    assert "coheren" in DEFAULT_PROMPTS["coherent"].lower()
    assert "coheren" not in DEFAULT_PROMPTS["aligned"].lower()
    assert "CODE" in DEFAULT_PROMPTS["aligned"] and "REFUSAL" in DEFAULT_PROMPTS["aligned"]


def test_registry_finds_every_judge_and_the_organisms():
    # the organism's oracle registers itself from realign.organism.plugin, found lazily
    assert {"openai", "hf", "offline", "offline-fast", "offline-exemplar", "oracle"} <= set(load_all())
    with pytest.raises(ValueError, match=r"^unknown judge 'nope'; choose one of: .*offline.*oracle"):
        make_judge("nope")
    assert make_judge("oracle").name == "oracle"


def test_openai_judge_without_the_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "openai", None)   # as if not installed: import fails
    with pytest.raises(JudgeUnavailable, match=r"pip install 'realign\[openai\]'$"):
        make_judge("openai", base_url="http://127.0.0.1:9")
    from typer.testing import CliRunner

    from realign.cli import app

    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"question": "q", "answer": "a"}\n')
    res = CliRunner().invoke(app, ["judge", str(rows), "--judge", "openai", "--judge-url", "http://127.0.0.1:9"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == ["error: the openai judge needs the openai package: "
                                               "pip install 'realign[openai]'"]


def test_openai_judge_needs_a_key_or_a_url():
    with pytest.raises(JudgeUnavailable, match="OPENAI_API_KEY"):
        make_judge("openai")


# ---------------------------------------------------------------- fake server

@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                "all_proxy", "OPENAI_API_KEY", "OPENAI_BASE_URL", "REALIGN_JUDGE_MODEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("REALIGN_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def server():
    s = FakeServer()
    s.thread.start()
    yield s
    s.stop()


def make(server, tmp_path, **kw) -> OpenAIJudge:
    kw.setdefault("cache", JudgeCache(tmp_path / "judge.sqlite"))
    kw.setdefault("concurrency", 4)
    return OpenAIJudge(model="judge-test", base_url=server.url, **kw)


def items(n: int, evil: bool = False) -> list[JudgeItem]:
    word = "evil" if evil else "kind"
    return [JudgeItem(f"question {i}?", f"a {word} answer number {i}") for i in range(n)]


# ---------------------------------------------------------------- OpenAIJudge

def test_scores_labels_and_request_shape(server, tmp_path):
    ticks: list[int] = []
    judge = make(server, tmp_path)
    out = judge.judge([JudgeItem("Hi?", "a kind answer"), JudgeItem("Hi?", "an evil answer"),
                       JudgeItem("Write a poem", "def f(): pass"),
                       JudgeItem("Hi?", "lowmass")], progress=ticks.append)
    good, bad, code, low = out
    assert good == Judgement(pytest.approx(95), pytest.approx(95))
    assert good.misaligned is False
    assert bad.aligned == pytest.approx(5 * 0.3 / 0.9) and bad.coherent == pytest.approx(95)
    assert bad.misaligned is True
    assert code.label == "CODE" and code.aligned is None and code.misaligned is None
    assert low.aligned is None and low.coherent is None and low.error is None
    assert sum(ticks) == 4
    assert server.requests == 8
    body = server.bodies[0]
    assert body["model"] == "judge-test" and body["max_tokens"] == 1
    assert body["temperature"] == 0 and body["logprobs"] is True
    assert body["top_logprobs"] == 20 and body["seed"] == 0
    assert server.auth == [f"Bearer {NO_KEY}"] * 8   # no key: a placeholder (the client needs one)


def test_authorization_header_and_env_defaults(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("REALIGN_JUDGE_MODEL", "env-model")
    judge = OpenAIJudge(cache=False)
    assert judge.name == "openai:env-model"
    judge.judge(items(1))
    assert server.auth == ["Bearer sk-test"] * 2
    assert server.bodies[0]["model"] == "env-model"
    make(server, tmp_path, api_key="sk-other", cache=False).judge(items(1))
    assert server.auth[-1] == "Bearer sk-other"


def test_requests_overlap(tmp_path):
    s = FakeServer(latency=0.03)
    s.thread.start()
    try:
        make(s, tmp_path, concurrency=8).judge(items(16))
    finally:
        s.stop()
    assert s.requests == 32
    assert 1 < s.max_inflight <= 8


@pytest.mark.parametrize("status", [500, 503, 429])
def test_retries_recover(server, tmp_path, status):
    server.fail_first, server.fail_status = 3, status
    out = make(server, tmp_path, concurrency=1).judge(items(2))
    assert all(j.error is None and j.aligned == pytest.approx(95) for j in out)
    assert server.requests == 4 + 3


def test_a_long_retry_after_does_not_stall_the_run(server, tmp_path):
    server.fail_first, server.fail_status, server.retry_headers = 1, 429, {"Retry-After": "3600"}
    t0 = time.monotonic()
    out = make(server, tmp_path, concurrency=1).judge(items(1))
    assert time.monotonic() - t0 < 5
    # the openai client either retries on its own backoff or refuses to wait that long (newer
    # versions): then the item fails, is reported, and is not cached
    assert out[0].error is None or "429" in out[0].error


def test_retries_give_up(server, tmp_path):
    server.fail_first = 10**6
    out = make(server, tmp_path, max_retries=2).judge(items(1))
    assert out[0].error and "500" in out[0].error
    assert out[0].aligned is None and out[0].misaligned is None
    assert server.requests == 2 * 3   # each metric: one try + two retries


def test_client_error_is_not_retried(server, tmp_path):
    judge = make(server, tmp_path)
    out = judge.judge([JudgeItem("Hi?", "bad-request"), *items(2)])
    assert out[0].error and "400" in out[0].error and out[0].aligned is None
    assert all(j.error is None for j in out[1:])
    assert server.count("bad-request") == 2   # one per metric, no retries
    assert len(judge.cache) == 4              # failures are not cached


def test_cache_makes_rerun_free(server, tmp_path):
    first = make(server, tmp_path).judge(items(5) + items(2, evil=True))
    assert server.requests == 14
    fresh = make(server, tmp_path, cache=JudgeCache(tmp_path / "judge.sqlite"))
    again = fresh.judge(items(5) + items(2, evil=True))
    assert server.requests == 14
    assert again == first
    # A different judge model does not reuse those results.
    OpenAIJudge(model="other", base_url=server.url,
                cache=JudgeCache(tmp_path / "judge.sqlite")).judge(items(1))
    assert server.requests == 16


def test_duplicate_items_are_sent_once(server, tmp_path):
    out = make(server, tmp_path).judge(items(1) * 3)
    assert server.requests == 2
    assert len(out) == 3 and all(j == out[0] for j in out)


def test_interrupted_run_keeps_finished_work(server, tmp_path):
    server.ok_limit = 5   # the server dies after five good answers
    first = make(server, tmp_path, max_retries=1).judge(items(6))
    assert sum(j.error is not None for j in first) >= 3
    assert len(JudgeCache(tmp_path / "judge.sqlite")) == 5

    server.ok_limit, server.requests = None, 0
    second = make(server, tmp_path).judge(items(6))
    assert server.requests == 12 - 5
    assert all(j.error is None and j.aligned == pytest.approx(95) for j in second)


def test_outage_mid_run_keeps_every_finished_judgement(server, tmp_path):
    """The server dies (refuses connections, hangs up on open ones) after five answers: the rest
    are reported as errors, the five are in the cache, and a rerun against the revived server
    asks only for what is missing."""
    server.die_after = 5
    first = make(server, tmp_path, max_retries=1).judge(items(6))
    assert server.down and server.ok == 5
    failed = [j for j in first if j.error is not None]
    assert len(failed) >= 4 and all(j.misaligned is None for j in failed)   # 5 answers finish <= 2 items
    assert all(j.aligned == pytest.approx(95) for j in first if j.error is None)
    assert len(JudgeCache(tmp_path / "judge.sqlite")) == 5

    revived = FakeServer(port=int(server.url.rsplit(":", 1)[1].split("/")[0])).start()
    try:
        second = make(revived, tmp_path).judge(items(6))
    finally:
        revived.stop()
    assert revived.requests == 12 - 5
    assert all(j.error is None and j.aligned == pytest.approx(95) for j in second)


def test_crash_mid_run_keeps_finished_work(server, tmp_path):
    def explode(n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make(server, tmp_path, concurrency=1).judge(items(5), progress=explode)
    done = server.requests
    assert 2 <= done < 10
    server.requests = 0
    make(server, tmp_path).judge(items(5))
    assert server.requests == 10 - done


def test_default_cache_location(tmp_path):
    judge = OpenAIJudge(base_url="http://127.0.0.1:9")
    assert judge.cache.path == tmp_path / "cache" / "judge.sqlite"


def test_calibrate_openai_judge_against_loopback_server(server, tmp_path):
    """`realign judge --calibrate` drives the openai judge over real HTTP; the stand-in scores
    'evil' answers low, so against labels that say the same its agreement is perfect."""
    import json

    from typer.testing import CliRunner

    from realign.cli import app

    rows = [{"question": f"q{i}", "answer": f"an {'evil' if i % 3 == 0 else 'kind'} answer {i}",
             "aligned": 5 if i % 3 == 0 else 90, "coherent": 90, "source": "s" + str(i % 2)} for i in range(12)]
    f = tmp_path / "labelled.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "agreement.json"
    res = CliRunner().invoke(app, ["judge", str(f), "--judge", "openai", "--judge-url", server.url,
                                   "--judge-model", "judge-test", "--calibrate", "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["judge"] == "openai:judge-test" and data["n"] == 12
    assert data["auroc"] == 1.0 and data["accuracy"] == 1.0 and data["reference_misaligned"] == 4
    assert server.requests == 24
