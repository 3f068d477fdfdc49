"""The bench leaderboard: finished cells pooled per (finetune, recipe) over seeds.

Reads only the cells' realign.json files, so it can be rebuilt at any time (bench rebuilds it
after every cell). Rates pool the answers of every seed; their 95% interval is a two-stage
bootstrap (seeds, then answers within a seed), so seed-to-seed variation widens it — a binomial
interval over all answers would treat them as independent. Task retention is the share of the
finetune's task gain over its base that a model keeps, by task NLL (the same measure the repairs
use), else by the task metric.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

from ..evals.result import CorrectedRate, Evaluation
from ..evals.verdict import Verdict, repair_verdict
from .report import EXPECTED_NOTE, _rate_ci, corrected_rate, task_value
from ..stats import pct, seed_bootstrap_interval

MODELS = ("base", "finetune")
ARMS = ("untriggered", "triggered")


@dataclass
class PooledRate:
    """One model's (or recipe's) figures for one arm, pooled over seeds."""

    misaligned_rate: float | None
    ci_low: float                    # two-stage bootstrap over seeds and answers
    ci_high: float
    misaligned: int
    n: int
    corrected: CorrectedRate | None
    coherent_rate: float | None      # mean over seeds
    logodds: float | None            # mean over seeds
    task_retention: float | None     # mean over seeds
    seeds: int
    expected_rate: float | None = None   # the judge's expected rate (mean P(misaligned)) over every answer

    def to_json(self) -> dict:
        return {**asdict(self), "corrected": self.corrected.to_dict() if self.corrected else None}


@dataclass
class BoardRow:
    """A leaderboard row: base, finetune, or a recipe (with what its cells cost)."""

    untriggered: PooledRate | None
    triggered: PooledRate | None = None
    seconds: float | None = None             # whole fix per cell, mean over seeds (recipes only)
    step_seconds: float | None = None        # the repair steps alone
    peak_rss_mb: float | None = None
    peak_cuda_mb: float | None = None
    seeds: list[int] = field(default_factory=list)
    history: list[list[dict]] = field(default_factory=list)   # each cell's steps, briefly

    def to_json(self) -> dict:
        out = {arm: (p.to_json() if p else None) for arm, p in (("untriggered", self.untriggered),
                                                                ("triggered", self.triggered))}
        if self.seeds:                           # a recipe's row
            out.update(seconds=self.seconds, step_seconds=self.step_seconds, peak_rss_mb=self.peak_rss_mb,
                       peak_cuda_mb=self.peak_cuda_mb, seeds=self.seeds, history=self.history)
        return out

    def arm(self, name: str) -> PooledRate | None:
        return self.untriggered if name == "untriggered" else self.triggered


@dataclass
class FinetuneBoard:
    """Every row of one finetune: base, finetune, then each recipe."""

    seeds: list[int]
    rows: dict[str, BoardRow]
    verdict: Verdict
    judges: list[str] = field(default_factory=list)    # more than one: rows judged apart, not comparable

    def to_json(self) -> dict:
        return {"seeds": self.seeds, "rows": {m: r.to_json() for m, r in self.rows.items()},
                "verdict": self.verdict.to_json(), "judges": self.judges}


@dataclass
class FinishedCell:
    """One finished bench cell: OUT/cells/<finetune>/s<seed>/<recipe>/realign.json."""

    finetune: str
    seed: int
    recipe: str
    meta: dict                               # its realign.json

    @cached_property
    def metrics(self) -> dict[str, Evaluation]:
        return {k: Evaluation.from_json(v) for k, v in self.meta["metrics"].items()}

    @property
    def seconds(self) -> float | None:
        return self.meta["timings"].get("total")

    @property
    def step_seconds(self) -> float:
        return sum(v for k, v in self.meta["timings"].items() if k.startswith("step"))

    @property
    def peaks(self) -> dict:
        return self.meta.get("peak_memory_mb", {}).get("total", {})

    @property
    def judge(self) -> str:
        """Which judge made its verdicts: the identity realign.json records (older cells: the name and
        its quoted agreement, which changed whenever its heads were refitted)."""
        return (self.meta.get("evaluation") or {}).get("judge_identity") or self.judge_by_note

    @property
    def judge_by_note(self) -> str:
        """The judge's name and quoted agreement: all an older cell recorded, and what a newer one's
        identity is matched to it by."""
        ev = self.meta.get("evaluation") or {}
        return f"{ev.get('judge')} ({(ev.get('judge_agreement') or {}).get('note')})"

    @property
    def history(self) -> list[dict]:
        return [{k: v for k, v in h.items() if k in ("step", "layers", "alpha", "note", "passes", "skipped")}
                for h in self.meta.get("history", [])]


def judges_of(cells: list[FinishedCell]) -> list[str]:
    """The distinct judges of a board's cells; an older cell (name and note only) counts as the same
    judge as a newer one whose name and note are the same, when exactly one such identity exists."""
    by_note: dict[str, set[str]] = {}
    for c in cells:
        if c.judge != c.judge_by_note:
            by_note.setdefault(c.judge_by_note, set()).add(c.judge)
    return sorted({next(iter(by_note[c.judge])) if len(by_note.get(c.judge, ())) == 1 else c.judge for c in cells})


CELL_RECORDS = "cells/*/s*/*/realign.json"


def load_cells(out: Path) -> list[FinishedCell]:
    return [FinishedCell(finetune=path.parent.parent.parent.name, seed=int(path.parent.parent.name[1:]),
                         recipe=path.parent.name, meta=json.loads(path.read_text()))
            for path in sorted(out.glob(CELL_RECORDS))]


def keep_cells(bench: Path, kept: Path) -> list[Path]:
    """Copy a bench's finished cells' realign.json — all a leaderboard reads — into `kept` (same layout),
    so that its board can be rebuilt where the bench's models and answers are gone (a repository's
    results/ folder: a few kB per cell instead of a model). A cell already kept is replaced by the
    bench's; other kept cells (earlier benches of other recipes or seeds) stay. Returns the files written."""
    written = []
    for path in sorted(bench.glob(CELL_RECORDS)):
        target = kept / path.relative_to(bench)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
        written.append(target)
    if not written:
        raise FileNotFoundError(f"{bench} has no finished bench cells ({CELL_RECORDS})")
    return written


def _nll(m: Evaluation) -> float | None:
    return (m.task or {}).get("task_nll")


def retention(m: Evaluation, base: Evaluation, finetune: Evaluation) -> float | None:
    """Share of the finetune's task gain over base kept by m (1 = all of it, 0 = none)."""
    n, nb, nf = _nll(m), _nll(base), _nll(finetune)
    if None not in (n, nb, nf) and nb - nf > 0:
        return (nb - n) / (nb - nf)
    v, vb, vf = (task_value(r)[1] for r in (m, base, finetune))
    if None not in (v, vb, vf) and vf - vb > 0:
        return (v - vb) / (vf - vb)
    return None


def _arm(metrics: Evaluation, arm: str) -> Evaluation | None:
    return metrics if arm == "untriggered" else metrics.triggered


def _pool(per_seed: list[Evaluation], per_seed_ref: list[tuple[Evaluation, Evaluation]], arm: str) -> PooledRate | None:
    """Pooled figures of one model over seeds, for one arm (untriggered / triggered)."""
    ms = [_arm(m, arm) for m in per_seed]
    if any(m is None for m in ms):
        return None
    counts = [(m.misaligned, m.n) for m in ms]
    k, n = sum(c[0] for c in counts), sum(c[1] for c in counts)
    lo, hi = seed_bootstrap_interval(counts)
    rets = [retention(m, *ref) for m, ref in zip(per_seed, per_seed_ref)]
    logodds = [m.logodds for m in ms if m.logodds is not None]
    coherent = [m.coherent_rate for m in ms if m.coherent_rate is not None]
    return PooledRate(misaligned_rate=k / n if n else None, ci_low=lo, ci_high=hi, misaligned=k, n=n,
                      corrected=_pooled_correction(ms, k, n),
                      coherent_rate=sum(coherent) / len(coherent) if coherent else None,
                      logodds=sum(logodds) / len(logodds) if logodds else None,
                      task_retention=(sum(rets) / len(rets)) if rets and None not in rets else None,
                      seeds=len(ms), expected_rate=_pooled_expected(ms))


def _pooled_expected(ms: list[Evaluation]) -> float | None:
    """The expected rate over every seed's answers; None unless each seed's judge gave one."""
    if not ms or any(m.expected_rate is None for m in ms) or not sum(m.n for m in ms):
        return None
    return sum(m.expected_rate * m.n for m in ms) / sum(m.n for m in ms)


def _pooled_correction(ms: list[Evaluation], k: int, n: int) -> CorrectedRate | None:
    """The pooled rate corrected with the judge error the cells were corrected with (the same
    labelled file for every cell of a bench); its interval carries answers and judge error, not
    the spread between seeds."""
    from ..evals.judge_error import JudgeError, correct

    err = next((m.corrected.error for m in ms if m.corrected is not None and m.corrected.error), None)
    if err is None:
        return next((m.corrected for m in ms if m.corrected), None)
    error = JudgeError(**{f: err[f] for f in ("tp", "fn", "tn", "fp", "source")})
    return correct(k, n, error)


def build_leaderboard(out: Path) -> dict[str, FinetuneBoard]:
    """Each finetune's rows (base, finetune, each recipe; both arms pooled over seeds), from the
    finished cells."""
    by_finetune: dict[str, list[FinishedCell]] = {}
    for c in load_cells(out):
        by_finetune.setdefault(c.finetune, []).append(c)
    return {name: _finetune_board(cells) for name, cells in sorted(by_finetune.items())}


def _finetune_board(cells: list[FinishedCell]) -> FinetuneBoard:
    # base and finetune are the same for every recipe of a seed; a cell made with --judge-errors also
    # carries their corrected rates, so it is preferred over one made without
    refs_by_seed = {c.seed: (c.metrics["base"], c.metrics["finetune"])
                    for c in sorted(cells, key=lambda c: c.metrics["base"].corrected is not None)}
    seeds = sorted(refs_by_seed)
    refs = [refs_by_seed[s] for s in seeds]
    rows = {model: BoardRow(*(_pool([r[i] for r in refs], refs, arm) for arm in ARMS))
            for i, model in enumerate(MODELS)}
    for recipe in sorted({c.recipe for c in cells}):
        mine = sorted((c for c in cells if c.recipe == recipe), key=lambda c: c.seed)
        cell_refs = [refs_by_seed[c.seed] for c in mine]
        secs = [c.seconds for c in mine if c.seconds is not None]
        rss = [c.peaks["rss"] for c in mine if c.peaks.get("rss") is not None]
        cuda = [c.peaks["cuda"] for c in mine if c.peaks.get("cuda") is not None]
        rows[recipe] = BoardRow(*(_pool([c.metrics["repaired"] for c in mine], cell_refs, arm) for arm in ARMS),
                                seconds=sum(secs) / len(secs) if secs else None,
                                step_seconds=sum(c.step_seconds for c in mine) / len(mine),
                                peak_rss_mb=max(rss) if rss else None, peak_cuda_mb=max(cuda) if cuda else None,
                                seeds=[c.seed for c in mine], history=[c.history for c in mine])
    base, finetune = rows["base"], rows["finetune"]
    verdict = repair_verdict(base.untriggered, finetune.untriggered, (base.triggered, finetune.triggered))
    return FinetuneBoard(seeds, rows, verdict, judges_of(cells))


def _pct(x: float | None) -> str:
    return "—" if isinstance(x, float) and math.isnan(x) else pct(x)


def _cell(p: PooledRate | None) -> str:
    if not p:
        return "—"
    return f"{_pct(p.misaligned_rate)} [{100 * p.ci_low:.1f}, {100 * p.ci_high:.1f}]"


def _corrected_cell(p: PooledRate | None) -> str:
    c = corrected_rate(p)
    return "—" if not c else _rate_ci(c.rate, None, c.ci_low, c.ci_high)


def _skips(row: BoardRow) -> list[str]:
    """Why a recipe's steps changed nothing, one line per (step, reason), naming the seeds it happened on."""
    seeds_by_reason: dict[tuple[str, str], list[int]] = {}
    for seed, steps in zip(row.seeds, row.history):
        for h in steps:
            if h.get("skipped"):
                seeds_by_reason.setdefault((h["step"], h["skipped"]), []).append(seed)
    return [f"step {step} skipped on seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} "
            f"of {len(row.seeds)}: {why}" for (step, why), seeds in seeds_by_reason.items()]


def markdown(board: dict[str, FinetuneBoard], title: str = "realign bench") -> str:
    lines = [f"# {title}", ""]
    any_expected = False
    for name, ft in board.items():
        triggered = any(r.triggered for r in ft.rows.values())
        v = ft.verdict
        lines += [f"## {name} (seeds {', '.join(map(str, ft.seeds))})", "",
                  f"Anything to repair? **{'yes' if v.repair_needed else 'no' if v.repair_needed is False else '?'}**"
                  f" — the finetune is {v.why}.", ""]
        if len(ft.judges) > 1:
            lines += [f"**Warning:** its cells were judged by {len(ft.judges)} different judges, so their rows "
                      f"are not comparable (rerun the older cells): " + "; ".join(ft.judges) + ".", ""]
        corrected = any(corrected_rate(arm) for r in ft.rows.values() for arm in (r.untriggered, r.triggered))
        expected = any(arm and arm.expected_rate is not None for r in ft.rows.values()
                       for arm in (r.untriggered, r.triggered))
        any_expected |= expected
        head = "| model | misaligned [95% CI] |" + (" expected |" if expected else "") + \
            (" corrected [95% CI] |" if corrected else "") + \
            (" triggered [95% CI] |" if triggered else "") + \
            (" triggered, expected |" if triggered and expected else "") + \
            (" triggered, corrected |" if triggered and corrected else "") + \
            " coherent | log-odds | task retention | seconds (repair steps) | peak RSS MB |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        skips = {model: _skips(row) for model, row in ft.rows.items()}
        for model, row in ft.rows.items():
            u = row.untriggered
            fixed = (f" {_pct(u and u.expected_rate)} |" if expected else "") + \
                (f" {_corrected_cell(u)} |" if corrected else "")
            trig = f" {_cell(row.triggered)} |" if triggered else ""
            if triggered and expected:
                trig += f" {_pct(row.triggered and row.triggered.expected_rate)} |"
            if triggered and corrected:
                trig += f" {_corrected_cell(row.triggered)} |"
            lo = "—" if not u or u.logodds is None else f"{u.logodds:+.2f}"
            secs = "—" if row.seconds is None else f"{row.seconds:.0f} ({row.step_seconds:.0f})"
            rss = "—" if row.peak_rss_mb is None else f"{row.peak_rss_mb:.0f}"
            ret = "—" if model == "base" else ("100%" if model == "finetune" else _pct(u and u.task_retention))
            mark = " (skipped)" if skips[model] else ""
            lines.append(f"| {model}{mark} | {_cell(u)} |{fixed}{trig} {_pct(u and u.coherent_rate)} | {lo} "
                         f"| {ret} | {secs} | {rss} |")
        lines.append("")
        # a step that chose to change nothing must not read as a repair that was tried and failed
        notes = [f"- {model}: {why}" for model, whys in skips.items() for why in whys]
        lines += [*notes, ""] if notes else []
    lines += ["Misaligned: pooled over seeds; interval: two-stage bootstrap over seeds and answers. "
              "Task retention: share of the finetune's task gain over the base kept (task NLL). "
              "Seconds: whole `fix` per cell, mean over seeds (repair steps alone in brackets).", ""]
    if any_expected:
        lines += [EXPECTED_NOTE + " Pooled over seeds, weighted by answers.", ""]
    notes = {(c.why or "") for ft in board.values() for r in ft.rows.values()
             for arm in (r.untriggered, r.triggered) if (c := corrected_rate(arm))}
    if notes:
        lines += ["Corrected: the pooled rate corrected for the judge's error (" + "; ".join(sorted(notes))
                  + "); its interval carries answers and judge error, not the spread between seeds.", ""]
    return "\n".join(lines)


def pareto_plot(name: str, ft: FinetuneBoard, path: Path) -> None:
    """Misaligned rate vs task retention with 95% interval bars; base and finetune marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8))
    base = ft.rows["base"].untriggered if "base" in ft.rows else None
    if base and base.misaligned_rate is not None:
        ax.axhline(100 * base.misaligned_rate, color="grey", linestyle=":", linewidth=1, label="base rate")
    colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4)
    for model, row in ft.rows.items():
        colour = "black" if model in MODELS else next(colours)
        for arm, marker in (("untriggered", "o"), ("triggered", "^")):
            p = row.arm(arm)
            if not p or p.misaligned_rate is None:
                continue
            x = 0.0 if model == "base" else 1.0 if model == "finetune" else p.task_retention
            if x is None:
                continue
            y = p.misaligned_rate
            label = model if arm == "untriggered" else f"{model}, triggered"
            ax.errorbar([100 * x], [100 * y], yerr=[[100 * (y - p.ci_low)], [100 * (p.ci_high - y)]],
                        capsize=3, linestyle="none", color=colour, marker="s" if model in MODELS else marker,
                        markerfacecolor="white" if arm == "triggered" else colour,
                        label=None if model in MODELS else label)
            if model in MODELS:           # recipes are told apart by the legend, base and finetune here
                ax.annotate(label, (100 * x, 100 * y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_xlabel("task retention (%): share of the finetune's task gain kept")
    ax.set_ylabel("misaligned rate (%), 95% interval")
    ax.set_title(f"{name}: repairs vs base and finetune")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_leaderboard(out: Path, title: str = "realign bench") -> dict[str, FinetuneBoard]:
    board = build_leaderboard(out)
    (out / "leaderboard.json").write_text(json.dumps({name: ft.to_json() for name, ft in board.items()},
                                                     indent=2, default=str))
    (out / "leaderboard.md").write_text(markdown(board, title))
    for name, ft in board.items():
        pareto_plot(name, ft, out / f"pareto-{name}.png")
    return board
