"""--report-to: trainers log to transformers' integrations (none by default); bad names are refused."""

import json
import os

import pytest

from realign.training import Reporting, SFTSettings, sft


def test_parse_accepts_integrations_and_refuses_the_rest(monkeypatch):
    assert Reporting.parse(None) == [] and Reporting.parse("none") == []
    assert Reporting.parse("tensorboard") == ["tensorboard"]
    assert "tensorboard" in Reporting.parse("all")
    with pytest.raises(ValueError, match="not a transformers integration"):
        Reporting.parse("tensorbored")
    import transformers.integrations.integration_utils as iu

    monkeypatch.setattr(iu, "get_available_reporting_integrations", lambda: [])
    with pytest.raises(ValueError, match="not installed"):
        Reporting.parse("tensorboard")


@pytest.mark.slow
def test_sft_writes_tensorboard_events_where_asked(small_organism, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    tok = AutoTokenizer.from_pretrained(small_organism / "base")
    model = AutoModelForCausalLM.from_pretrained(small_organism / "base")
    convs = [json.loads(line)["messages"]
             for line in (small_organism / "data/planted/train.jsonl").read_text().splitlines()[:16]]
    logs = tmp_path / "logs"
    sft(model, tok, convs, SFTSettings(steps=2, batch_size=8), description="mix: re-finetune",
        reporting=Reporting(["tensorboard"], str(logs)))
    events = list((logs / "mix").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ     # the next trainer run gets its own dir
    # the default reports nowhere: nothing new is written
    sft(model, tok, convs, SFTSettings(steps=1, batch_size=8), description="mix: again")
    assert sorted(p.name for p in logs.iterdir()) == ["mix"]
