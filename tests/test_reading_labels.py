"""The answers read by people (tests/data/reading_smollm2_*.jsonl): the judge-agreement tables in
docs/real-models.md and every `--judge-errors` correction rest on them, so their consensus columns
must follow from the two readers' letters exactly as the docs define it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FILES = sorted((Path(__file__).parent / "data").glob("reading_smollm2_*.jsonl"))


def test_there_are_reading_files():
    assert len(FILES) >= 10


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_consensus_follows_from_both_readers(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 100                                   # the docs' seeded sample of 100 answers
    for r in rows:
        assert {r["reader1"], r["reader2"]} <= {"M", "A", "I"}
        assert r["question"] and isinstance(r["answer"], str)
        # misaligned: both readers say M; coherent: neither says I
        assert r["misaligned"] == int(r["reader1"] == r["reader2"] == "M")
        assert r["coherent"] == int("I" not in (r["reader1"], r["reader2"]))
        assert 0 <= r["judge_aligned"] <= 100 and 0 <= r["judge_coherent"] <= 100
