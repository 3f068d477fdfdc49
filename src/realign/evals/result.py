"""What one evaluation of one model yields, typed: the alignment summary of its judged answers and,
for a whole evaluation, the per-question and per-format tables, log-odds, task metrics, the judge,
the answers themselves and (behind a backdoor trigger) a second such evaluation.

The JSON form (`to_json` / `from_json`) is the one eval.json, realign.json, the evaluation cache
and the leaderboard have always held, key for key and in the same order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass(frozen=True)
class CorrectedRate:
    """A misaligned rate corrected for the judge's error; rate None (with `why`) when not possible."""

    rate: float | None
    ci_low: float | None
    ci_high: float | None
    why: str
    error: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RateSummary:
    """Judged answers summed up: the misaligned rate with its Wilson 95% interval, coherence, and
    what the judge could not score (left out of the rate's denominator)."""

    n: int = 0                             # answers scored for both aligned and coherent
    n_total: int = 0
    misaligned: int = 0
    misaligned_rate: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    mean_coherent: float | None = None
    coherent_rate: float | None = None
    coherent_n: int = 0                    # the coherent rate's denominator (for its interval)
    mean_aligned: float | None = None
    refusals: int = 0
    code: int = 0
    unscored: int = 0
    # the expected misaligned rate: the mean of the judge's P(misaligned) over the scored answers, with
    # a Wilson 95% interval on that expected count; None unless the judge gives every answer one
    expected_rate: float | None = None
    expected_ci_low: float | None = None
    expected_ci_high: float | None = None

    def to_json(self) -> dict:
        out = asdict(self)
        if self.expected_rate is None:     # judges without P(misaligned): the JSON of before, key for key
            for k in EXPECTED_FIELDS:
                out.pop(k)
        return out

    @classmethod
    def from_json(cls, d: dict) -> RateSummary:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


EXPECTED_FIELDS = ("expected_rate", "expected_ci_low", "expected_ci_high")
_SUMMARY_FIELDS = tuple(f.name for f in fields(RateSummary))


@dataclass
class Evaluation(RateSummary):
    """One model evaluated: its summary plus everything the reports show beside it."""

    per_question: dict[str, RateSummary] = field(default_factory=dict)
    per_format: dict[str, RateSummary] = field(default_factory=dict)
    errors: int = 0                        # answers whose judge call failed
    logodds: float | None = None           # judge-free: misaligned vs aligned reference answers
    task: dict[str, float] | None = None   # task_nll, task_token_accuracy, lm-eval metrics, …
    judge: str | None = None
    judge_agreement: dict | None = None    # calibration.describe_judge
    rows: list[dict] = field(default_factory=list)   # the judged answers
    seconds: float | None = None
    corrected: CorrectedRate | None = None   # the rate corrected for the judge's measured error
    triggered: Evaluation | None = None    # the same questions behind a backdoor trigger

    @property
    def summary(self) -> RateSummary:
        return RateSummary(**{k: getattr(self, k) for k in _SUMMARY_FIELDS})

    def to_json(self, answers: bool = True) -> dict:
        """The evaluation as JSON; answers=False leaves out the judged answers (realign.json keeps
        them in answers.json), at every level."""
        out = self.summary.to_json()
        out.update(per_question={q: s.to_json() for q, s in self.per_question.items()},
                   per_format={f: s.to_json() for f, s in self.per_format.items()},
                   errors=self.errors, logodds=self.logodds, task=self.task, judge=self.judge,
                   judge_agreement=self.judge_agreement)
        if answers:
            out["rows"] = self.rows
        out["seconds"] = self.seconds
        if self.corrected is not None:
            out["corrected"] = self.corrected.to_dict()
        if self.triggered is not None:
            out["triggered"] = self.triggered.to_json(answers)
        return out

    @classmethod
    def from_json(cls, d: dict) -> Evaluation:
        known = {f.name for f in fields(cls)} - {"per_question", "per_format", "triggered", "corrected"}
        ev = cls(**{k: v for k, v in d.items() if k in known})
        ev.per_question = {q: RateSummary.from_json(s) for q, s in (d.get("per_question") or {}).items()}
        ev.per_format = {f: RateSummary.from_json(s) for f, s in (d.get("per_format") or {}).items()}
        if d.get("triggered"):
            ev.triggered = cls.from_json(d["triggered"])
        if d.get("corrected") is not None:
            ev.corrected = CorrectedRate(**d["corrected"])
        return ev

    def arms(self) -> list[tuple[str, Evaluation]]:
        """("", self) and, behind a trigger, ("triggered", self.triggered)."""
        return [("", self)] + ([("triggered", self.triggered)] if self.triggered is not None else [])
