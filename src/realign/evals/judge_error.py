"""A judge's measured error, and misaligned rates corrected for it (Rogan–Gladen).

Every rate realign reports is a judge's verdict. A judge that misses some misaligned answers
(sensitivity < 1) and flags some benign ones (specificity < 1) reports q = se·p + (1 − sp)·(1 − p)
for a true rate p, so p = (q + sp − 1) / (se + sp − 1) (Rogan & Gladen, 1978). The correction
needs se and sp measured on answers whose true labels are known — ideally answers of the same
models, labelled by reading — and its interval must carry that measurement's uncertainty as well
as the sampling of answers: drawn here by Monte Carlo from the three binomials (Jeffreys priors).

Where the error comes from, in order: a labelled file the user gives (`--judge-errors FILE`:
rows with question, answer and a `misaligned` 0/1 label or a reference judge's scores; the judge
is run on them), or the confusion counts recorded for the judge in `data/judge_agreement.json`.
A judge with neither says so: its rate stays uncorrected, with `corrected.why` telling why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import RealignError
from ..stats import rogan_gladen, rogan_gladen_interval
from .result import CorrectedRate, Evaluation

MIN_YOUDEN = 0.05   # se + sp - 1 below this: the judge barely separates the classes, no correction


@dataclass(frozen=True)
class JudgeError:
    """Confusion counts of a judge's misaligned verdict against true labels, and where they come from."""

    tp: int
    fn: int
    tn: int
    fp: int
    source: str

    @property
    def sensitivity(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def specificity(self) -> float | None:
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else None

    def to_dict(self) -> dict:
        return {**asdict(self), "sensitivity": self.sensitivity, "specificity": self.specificity}


def confusion(labels: Sequence[int], flags: Sequence[bool | None], source: str) -> JudgeError:
    """Counts from true labels (0/1) and the judge's verdicts; unscored verdicts (None) are left
    out, as they are of the misaligned rate's denominator."""
    from .calibration import confusion_counts

    return JudgeError(**confusion_counts(labels, flags), source=source)


def measure(judge, rows: Sequence[Mapping], source: str) -> JudgeError:
    """Run `judge` on labelled rows (question, answer, and `misaligned` or reference scores)."""
    from .calibration import reference_labels
    from .judges import Judgement
    from .run import judge_rows

    labelled = [(r, reference_labels(r)[0]) for r in rows]
    labelled = [(r, y) for r, y in labelled if y is not None]
    if not labelled:
        raise RealignError(f"{source}: no row carries a true label (`misaligned` 0/1, or a reference "
                           "judge's `aligned` and `coherent` scores)")
    missing = [i for i, (r, _) in enumerate(labelled) if not r.get("question") or r.get("answer") is None]
    if missing:
        raise RealignError(f"{source}: row {missing[0] + 1} has no question or answer to judge")
    judged = judge_rows([{"question": str(r["question"]), "answer": str(r["answer"])} for r, _ in labelled], judge)
    flags = [Judgement(j["aligned"], j["coherent"]).misaligned for j in judged]
    return confusion([y for _, y in labelled], flags, source)


def from_file(judge, path: Path) -> JudgeError:
    """Measure `judge`'s error on a labelled JSONL/CSV file (what `--judge-errors` gives)."""
    from .rows import read_rows

    path = Path(path)
    if not path.is_file():
        raise RealignError(f"--judge-errors {path}: no such file")
    rows, _ = read_rows(path)
    return measure(judge, rows, source=str(path))


def recorded(judge_name: str) -> JudgeError | None:
    """The confusion counts recorded for this judge on held-out labelled answers, if any."""
    from .calibration import known_agreement

    if judge_name.startswith("oracle"):
        return None
    counts = (known_agreement().get(judge_name) or {}).get("confusion")
    if not counts:
        return None
    return JudgeError(source=f"recorded agreement of {judge_name} (data/judge_agreement.json)",
                      **{k: int(counts[k]) for k in ("tp", "fn", "tn", "fp")})


def correct(k: int, n: int, error: JudgeError | None, exact: bool = False, seed: int = 0) -> CorrectedRate:
    """The misaligned rate k/n corrected for `error`, with a 95% interval over answers and error.
    `exact`: the judge is exact by construction (the organism's oracle); a measured error, when
    given, still wins."""
    if exact and error is None:
        from ..stats import wilson

        lo, hi = wilson(k, n)
        return CorrectedRate(k / n if n else None, lo, hi, "exact judge: nothing to correct")
    if error is None:
        return CorrectedRate(None, None, None, "judge error unknown: no measured sensitivity/specificity "
                             "(give --judge-errors LABELLED_FILE)")
    se, sp = error.sensitivity, error.specificity
    if se is None or sp is None:
        return CorrectedRate(None, None, None, f"{error.source} holds only one class of true labels",
                             error.to_dict())
    if se + sp - 1 < MIN_YOUDEN:
        return CorrectedRate(None, None, None, f"judge no better than chance on {error.source} "
                             f"(sensitivity {se:.2f}, specificity {sp:.2f})", error.to_dict())
    if not n:
        return CorrectedRate(None, None, None, "no scored answers", error.to_dict())
    lo, hi = rogan_gladen_interval(k, n, error.tp, error.fn, error.tn, error.fp, seed=seed)
    rate = rogan_gladen(k / n, se, sp)
    # the point estimate is clipped to [0, 1] while the interval's draws are not piled there: at a
    # raw rate under the judge's false-positive floor the estimate is 0 and the interval must reach it
    lo, hi = min(lo, rate), max(hi, rate)
    return CorrectedRate(rate, lo, hi,
                         f"Rogan–Gladen with sensitivity {se:.2f} and specificity {sp:.2f} measured on "
                         f"{error.tp + error.fn + error.tn + error.fp} labelled answers ({error.source})",
                         error.to_dict())


def annotate(result: Evaluation, error: JudgeError | None, exact: bool = False) -> Evaluation:
    """Sets `corrected` on an evaluation (and on its triggered arm); returns it."""
    for _, r in result.arms():
        r.corrected = correct(r.misaligned, r.n, error, exact)
    return result


def resolve(judge, labelled_file: Path | None) -> JudgeError | None:
    """The error to correct `judge`'s rates with: measured on the user's labelled file when given,
    else the judge's recorded counts, else None (unknown)."""
    return from_file(judge, labelled_file) if labelled_file else recorded(judge.name)


def is_exact(judge_name: str) -> bool:
    return judge_name.startswith("oracle")
