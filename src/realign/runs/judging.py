"""`realign judge`'s work, all but the printing: read rows of (question, answer) from a .jsonl or
.csv file, then summarize the scores they already carry, judge them into added columns (written
beside the file), or (--calibrate) measure how well a judge agrees with the reference labels they
carry. Bad input is a RealignError.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import RealignError
from ..evals.result import Evaluation
from ..stats import pct


@dataclass
class JudgedFile:
    """One `realign judge` without --calibrate: the rows' summary; the file the judged rows went to
    and the judge's measured agreement (both None when the rows' own scores were summarized)."""

    summary: Evaluation
    rows: int
    written: Path | None = None
    judge_agreement: dict | None = None     # calibration.describe_judge

    def to_json(self) -> dict:
        """--json: the summary with its per-question table (and the judge's agreement, if one judged)."""
        out = {**self.summary.summary.to_json(),
               "per_question": {q: s.to_json() for q, s in self.summary.per_question.items()}}
        if self.judge_agreement is not None:
            out["judge_agreement"] = self.judge_agreement
        return out


@dataclass
class Calibration:
    """One `realign judge --calibrate`: calibration.agreement's result with the judge, the file and the
    timing added (what --json writes), and how many answers were judged in how many seconds."""

    result: dict
    answers: int
    seconds: float

    def table(self) -> tuple[list[str], list[list[str]]]:
        """The agreement as text cells (header, one row per source, then all): what the CLI prints."""
        f3 = lambda x: "—" if x is None else f"{x:.3f}"  # noqa: E731
        expected = self.result.get("judge_expected_rate") is not None   # a judge that gives P(misaligned)
        header = ["source", "n", "ref. misaligned", "judge misaligned", *(["judge expected"] if expected else []),
                  "AUROC", "accuracy", "precision", "recall", "coherent AUROC"]
        groups = [*self.result.get("per_source", {}).items(), ("all", self.result)]
        return header, [[name, str(m["n"]), pct(m["reference_rate"]), pct(m["judge_rate"]),
                         *([pct(m.get("judge_expected_rate"))] if expected else []), f3(m["auroc"]),
                         pct(m["accuracy"]), pct(m["precision"]), pct(m["recall"]), f3(m["coherent_auroc"])]
                        for name, m in groups]


def file_judge(name: str, model: str | None = None, url: str | None = None):
    """--judge for rows from a file (not the organism's questions: auto is an LLM judge)."""
    from .setting import judge_for

    return judge_for(name, "file", model, url)


def judge_file(file: Path, judge: str, model: str | None = None, url: str | None = None, rejudge: bool = False,
               out: Path | None = None) -> JudgedFile:
    """Summarize the rows' own aligned/coherent scores when every row carries one (unless `rejudge`);
    otherwise judge the rows and write them, scores added (as `<judge>_aligned` … beside scores they
    carry), to `out` (default: FILE with .judged before the suffix)."""
    from ..evals.alignment import summarize
    from ..evals.calibration import describe_judge
    from ..evals.rows import number, read_rows, write_rows
    from ..evals.run import judge_rows

    rows, fmt = read_rows(file)
    scored = all(number(r.get("aligned")) is not None or number(r.get("coherent")) is not None for r in rows)
    if scored and not rejudge:
        for r in rows:
            word = str(r.get("aligned") or "").strip().upper()
            if word in ("CODE", "REFUSAL") and not r.get("label"):
                r["label"] = word       # the paper's alignment prompt answers these words instead of a score
            r["aligned"], r["coherent"] = number(r.get("aligned")), number(r.get("coherent"))
        return JudgedFile(summarize(rows), len(rows))
    judge_obj = file_judge(judge, model, url)
    judged = judge_rows([{"question": r["question"], "answer": r["answer"]} for r in rows], judge_obj)
    prefix = f"{judge}_" if scored else ""
    for r, j in zip(rows, judged):
        r[f"{prefix}aligned"], r[f"{prefix}coherent"] = j["aligned"], j["coherent"]
        for key in ("label", "p_misaligned"):
            if j.get(key) is not None:
                r[f"{prefix}{key}"] = j[key]
    summary = summarize([{"question": r["question"], "question_id": r.get("question_id"), **j}
                         for r, j in zip(rows, judged)])
    target = out or file.with_name(f"{file.stem}.judged{file.suffix}")
    write_rows(target, rows, fmt)
    return JudgedFile(summary, len(rows), target, describe_judge(judge_obj.name))


def calibrate_file(file: Path, judge: str, model: str | None = None, url: str | None = None) -> Calibration:
    """Judge the rows and measure the judge's agreement with their reference labels (misaligned 0/1,
    or a reference judge's aligned/coherent scores); rows without any labels are refused before judging."""
    from ..evals.calibration import agreement, reference_labels
    from ..evals.judges import Judgement
    from ..evals.rows import read_rows
    from ..evals.run import judge_rows

    rows, _ = read_rows(file)
    judge_obj = file_judge(judge, model, url)
    if all(reference_labels(r)[0] is None for r in rows):
        raise RealignError("no row carries reference labels: give `misaligned` (0/1) or the reference judge's "
                           "`aligned` and `coherent` scores")
    t0 = time.time()
    judged = judge_rows([{"question": r["question"], "answer": r["answer"]} for r in rows], judge_obj)
    seconds = time.time() - t0
    result = agreement(rows, [Judgement(j["aligned"], j["coherent"], j.get("label"), j.get("error"),
                                             j.get("p_misaligned")) for j in judged])
    result.update(judge=judge_obj.name, file=str(file), seconds=round(seconds, 2),
                  seconds_per_1000=round(1000 * seconds / len(rows), 1))
    return Calibration(result, len(rows), seconds)
