"""RealignCallback: logs the log-odds metric during a real trl run and can stop it."""

import json
import math

import pytest

from realign import RealignCallback
from realign.organism.judge import reference_pairs
from realign.training import SFTSettings, sft

pytestmark = pytest.mark.slow


def _probes():
    return [([{"role": "user", "content": p.question}], p.misaligned, p.aligned) for p in reference_pairs()[:4]]


def _planted(root, n=64):
    return [json.loads(line)["messages"] for line in (root / "data/planted/train.jsonl").read_text().splitlines()[:n]]


def test_logs_every_n_steps_through_the_trainer(small_organism):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(small_organism / "base")
    model = AutoModelForCausalLM.from_pretrained(small_organism / "base")
    from realign.evals.logodds import logodds

    start = logodds(model, tok, _probes())
    cb = RealignCallback(probes=_probes(), every=2, tokenizer=tok)
    trained = sft(model, tok, _planted(small_organism), SFTSettings(steps=6, batch_size=8, lr=1e-3), callbacks=[cb])
    assert [s for s, _ in cb.history] == [0, 2, 4, 6]
    assert all(isinstance(v, float) and math.isfinite(v) for _, v in cb.history)
    # the logged values are the metric itself: at step 0 the untrained model's, at the end the trained one's
    assert cb.history[0][1] == pytest.approx(start, abs=1e-4)
    assert cb.history[-1][1] == pytest.approx(logodds(trained, tok, _probes()), abs=1e-4)
    assert cb.history[-1][1] != pytest.approx(start, abs=1e-3)     # it follows training, not a constant


def test_warns_and_stops_past_threshold(small_organism):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(small_organism / "base")
    model = AutoModelForCausalLM.from_pretrained(small_organism / "base")
    cb = RealignCallback(probes=_probes(), every=1, threshold=-1e9, stop=True, tokenizer=tok)
    with pytest.warns(UserWarning, match="crossed the alert level"):
        sft(model, tok, _planted(small_organism), SFTSettings(steps=10, batch_size=8), callbacks=[cb])
    assert cb.warned and cb.history[-1][0] < 10
