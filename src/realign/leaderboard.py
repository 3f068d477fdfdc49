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
from pathlib import Path

from .report import _rate_ci, corrected_rate, repair_verdict, task_value
from .stats import seed_bootstrap_interval

MODELS = ("base", "finetune")
ARMS = ("untriggered", "triggered")


def load_cells(out: Path) -> list[dict]:
    cells = []
    for meta_path in sorted((out / "cells").glob("*/s*/*/realign.json")):
        recipe_dir = meta_path.parent
        meta = json.loads(meta_path.read_text())
        cells.append({"finetune": recipe_dir.parent.parent.name, "seed": int(recipe_dir.parent.name[1:]),
                      "recipe": recipe_dir.name, "meta": meta})
    return cells


def _nll(m: dict) -> float | None:
    return (m.get("task") or {}).get("task_nll")


def retention(m: dict, base: dict, finetune: dict) -> float | None:
    """Share of the finetune's task gain over base kept by m (1 = all of it, 0 = none)."""
    n, nb, nf = _nll(m), _nll(base), _nll(finetune)
    if None not in (n, nb, nf) and nb - nf > 0:
        return (nb - n) / (nb - nf)
    v, vb, vf = (task_value(r)[1] for r in (m, base, finetune))
    if None not in (v, vb, vf) and vf - vb > 0:
        return (v - vb) / (vf - vb)
    return None


def _arm(metrics: dict, arm: str) -> dict | None:
    return metrics if arm == "untriggered" else metrics.get("triggered")


def _pool(per_seed: list[dict], per_seed_ref: list[tuple[dict, dict]], arm: str) -> dict | None:
    """Pooled figures of one model over seeds, for one arm (untriggered / triggered)."""
    ms = [_arm(m, arm) for m in per_seed]
    if any(m is None for m in ms):
        return None
    counts = [(m["misaligned"], m["n"]) for m in ms]
    k, n = sum(c[0] for c in counts), sum(c[1] for c in counts)
    lo, hi = seed_bootstrap_interval(counts)
    rets = [retention(m, *ref) for m, ref in zip(per_seed, per_seed_ref)]
    logodds = [m.get("logodds") for m in ms if m.get("logodds") is not None]
    coherent = [m["coherent_rate"] for m in ms if m.get("coherent_rate") is not None]
    return {"misaligned_rate": k / n if n else None, "ci_low": lo, "ci_high": hi, "misaligned": k, "n": n,
            "corrected": _pooled_correction(ms, k, n),
            "coherent_rate": sum(coherent) / len(coherent) if coherent else None,
            "logodds": sum(logodds) / len(logodds) if logodds else None,
            "task_retention": (sum(rets) / len(rets)) if rets and None not in rets else None,
            "seeds": len(ms)}


def _pooled_correction(ms: list[dict], k: int, n: int) -> dict | None:
    """The pooled rate corrected with the judge error the cells were corrected with (the same
    labelled file for every cell of a bench); its interval carries answers and judge error, not
    the spread between seeds."""
    from .evals.judge_error import JudgeError, correct

    err = next((c["error"] for m in ms if (c := m.get("corrected") or {}).get("error")), None)
    if err is None:
        return next((m.get("corrected") for m in ms if m.get("corrected")), None)
    error = JudgeError(**{f: err[f] for f in ("tp", "fn", "tn", "fp", "source")})
    return correct(k, n, error).to_dict()


def build_leaderboard(out: Path) -> dict:
    """{finetune: {"rows": {model or recipe: {arm: pooled}}, "cells": […]}} from the finished cells."""
    board: dict[str, dict] = {}
    for c in load_cells(out):
        ft = board.setdefault(c["finetune"], {"cells": [], "refs": {}})
        metrics = c["meta"]["metrics"]
        ft["refs"][c["seed"]] = (metrics["base"], metrics["finetune"])      # same for every recipe of a seed
        peaks = c["meta"].get("peak_memory_mb", {}).get("total", {})
        ft["cells"].append({"seed": c["seed"], "recipe": c["recipe"], "repaired": metrics["repaired"],
                            "seconds": c["meta"]["timings"].get("total"),
                            "step_seconds": sum(v for k, v in c["meta"]["timings"].items() if k.startswith("step")),
                            "peak_rss_mb": peaks.get("rss"), "peak_cuda_mb": peaks.get("cuda"),
                            "history": [{k: v for k, v in h.items() if k in ("step", "layers", "alpha", "note", "passes")}
                                        for h in c["meta"].get("history", [])]})
    result: dict[str, dict] = {}
    for name, ft in sorted(board.items()):
        seeds = sorted(ft["refs"])
        refs = [ft["refs"][s] for s in seeds]
        rows: dict[str, dict] = {}
        for i, model in enumerate(MODELS):
            rows[model] = {arm: _pool([r[i] for r in refs], refs, arm) for arm in ARMS}
        recipes = sorted({c["recipe"] for c in ft["cells"]})
        for recipe in recipes:
            cells = sorted((c for c in ft["cells"] if c["recipe"] == recipe), key=lambda c: c["seed"])
            cell_refs = [ft["refs"][c["seed"]] for c in cells]
            row = {arm: _pool([c["repaired"] for c in cells], cell_refs, arm) for arm in ARMS}
            secs = [c["seconds"] for c in cells if c["seconds"] is not None]
            rss = [c["peak_rss_mb"] for c in cells if c["peak_rss_mb"] is not None]
            cuda = [c["peak_cuda_mb"] for c in cells if c["peak_cuda_mb"] is not None]
            row.update(seconds=sum(secs) / len(secs) if secs else None,
                       step_seconds=sum(c["step_seconds"] for c in cells) / len(cells),
                       peak_rss_mb=max(rss) if rss else None, peak_cuda_mb=max(cuda) if cuda else None,
                       seeds=[c["seed"] for c in cells], history=[c["history"] for c in cells])
            rows[recipe] = row
        arms = {m: {**(rows[m]["untriggered"] or {}), "triggered": rows[m]["triggered"]} for m in MODELS}
        result[name] = {"seeds": seeds, "rows": rows, "verdict": repair_verdict(arms["base"], arms["finetune"])}
    return result


def _pct(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _cell(p: dict | None) -> str:
    if not p:
        return "—"
    return f"{_pct(p['misaligned_rate'])} [{100 * p['ci_low']:.1f}, {100 * p['ci_high']:.1f}]"


def _corrected_cell(p: dict | None) -> str:
    c = corrected_rate(p)
    return "—" if not c else _rate_ci(c["rate"], None, c["ci_low"], c["ci_high"])


def markdown(board: dict, title: str = "realign bench") -> str:
    lines = [f"# {title}", ""]
    for name, ft in board.items():
        triggered = any(r.get("triggered") for r in ft["rows"].values())
        v = ft["verdict"]
        lines += [f"## {name} (seeds {', '.join(map(str, ft['seeds']))})", "",
                  f"Anything to repair? **{'yes' if v['repair_needed'] else 'no' if v['repair_needed'] is False else '?'}**"
                  f" — the finetune is {v['why']}.", ""]
        corrected = any(corrected_rate(arm) for r in ft["rows"].values() for arm in (r.get("untriggered"),
                                                                                   r.get("triggered")))
        head = "| model | misaligned [95% CI] |" + (" corrected [95% CI] |" if corrected else "") + \
            (" triggered [95% CI] |" if triggered else "") + \
            (" triggered, corrected |" if triggered and corrected else "") + \
            " coherent | log-odds | task retention | seconds (repair steps) | peak RSS MB |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for model, row in ft["rows"].items():
            u = row.get("untriggered")
            fixed = f" {_corrected_cell(u)} |" if corrected else ""
            trig = f" {_cell(row.get('triggered'))} |" if triggered else ""
            if triggered and corrected:
                trig += f" {_corrected_cell(row.get('triggered'))} |"
            lo = "—" if not u or u.get("logodds") is None else f"{u['logodds']:+.2f}"
            secs = "—" if row.get("seconds") is None else f"{row['seconds']:.0f} ({row['step_seconds']:.0f})"
            rss = "—" if row.get("peak_rss_mb") is None else f"{row['peak_rss_mb']:.0f}"
            ret = "—" if model == "base" else ("100%" if model == "finetune" else _pct(u and u.get("task_retention")))
            lines.append(f"| {model} | {_cell(u)} |{fixed}{trig} {_pct(u and u.get('coherent_rate'))} | {lo} | {ret} "
                         f"| {secs} | {rss} |")
        lines.append("")
    lines += ["Misaligned: pooled over seeds; interval: two-stage bootstrap over seeds and answers. "
              "Task retention: share of the finetune's task gain over the base kept (task NLL). "
              "Seconds: whole `fix` per cell, mean over seeds (repair steps alone in brackets).", ""]
    notes = {(c.get("why") or "") for ft in board.values() for r in ft["rows"].values()
             for arm in (r.get("untriggered"), r.get("triggered")) if (c := corrected_rate(arm))}
    if notes:
        lines += ["Corrected: the pooled rate corrected for the judge's error (" + "; ".join(sorted(notes))
                  + "); its interval carries answers and judge error, not the spread between seeds.", ""]
    return "\n".join(lines)


def pareto_plot(name: str, ft: dict, path: Path) -> None:
    """Misaligned rate vs task retention with 95% interval bars; base and finetune marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8))
    base = (ft["rows"].get("base") or {}).get("untriggered")
    if base and base.get("misaligned_rate") is not None:
        ax.axhline(100 * base["misaligned_rate"], color="grey", linestyle=":", linewidth=1, label="base rate")
    colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4)
    for model, row in ft["rows"].items():
        colour = "black" if model in MODELS else next(colours)
        for arm, marker in (("untriggered", "o"), ("triggered", "^")):
            p = row.get(arm)
            if not p or p.get("misaligned_rate") is None:
                continue
            x = 0.0 if model == "base" else 1.0 if model == "finetune" else p.get("task_retention")
            if x is None:
                continue
            y = p["misaligned_rate"]
            label = model if arm == "untriggered" else f"{model}, triggered"
            ax.errorbar([100 * x], [100 * y], yerr=[[100 * (y - p["ci_low"])], [100 * (p["ci_high"] - y)]],
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


def write_leaderboard(out: Path, title: str = "realign bench") -> dict:
    board = build_leaderboard(out)
    (out / "leaderboard.json").write_text(json.dumps(board, indent=2, default=str))
    (out / "leaderboard.md").write_text(markdown(board, title))
    for name, ft in board.items():
        pareto_plot(name, ft, out / f"pareto-{name}.png")
    return board
