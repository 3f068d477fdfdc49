"""Small statistics helpers."""

from __future__ import annotations

import math


def pct(x: float | None) -> str:
    """A rate as the tables print it: "12.5%", or "—" when there is none."""
    return "—" if x is None else f"{100 * x:.1f}%"


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score 95% interval for k successes in n trials; (0, 1) when n == 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def seed_bootstrap_interval(counts: list[tuple[int, int]], reps: int = 4000, seed: int = 0,
                            level: float = 0.95) -> tuple[float, float]:
    """Interval for a rate pooled over seeds, from (misaligned, answers) per seed: resample the
    seeds, then each chosen seed's answers (binomially at its own rate). With one seed this is an
    answers-only bootstrap, so Wilson is used instead (better at rates near 0 or 1)."""
    import numpy as np

    counts = [(k, n) for k, n in counts if n > 0]
    if not counts:
        return 0.0, 1.0
    if len(counts) == 1:
        return wilson(*counts[0])
    rng = np.random.default_rng(seed)
    k_s, n_s = np.array([c[0] for c in counts]), np.array([c[1] for c in counts])
    pick = rng.integers(0, len(counts), size=(reps, len(counts)))          # seeds, with replacement
    k = rng.binomial(n_s[pick], k_s[pick] / n_s[pick]).sum(1)              # then answers within each
    rates = list(k / n_s[pick].sum(1))
    rates.sort()
    lo, hi = rates[int((1 - level) / 2 * reps)], rates[min(reps - 1, int((1 + level) / 2 * reps))]
    # the pooled answers alone can never be more certain than this: keep at least Wilson's width
    wl, wh = wilson(sum(k for k, _ in counts), sum(n for _, n in counts))
    return float(min(lo, wl)), float(max(hi, wh))


def rogan_gladen(observed: float, sensitivity: float, specificity: float) -> float:
    """The true rate behind an observed rate of an imperfect classifier, clipped to [0, 1]:
    observed = se·p + (1 − sp)·(1 − p)  =>  p = (observed + sp − 1) / (se + sp − 1)."""
    youden = sensitivity + specificity - 1
    if youden <= 0:
        raise ValueError("sensitivity + specificity must exceed 1 for a correction")
    return min(1.0, max(0.0, (observed + specificity - 1) / youden))


def rogan_gladen_interval(k: int, n: int, tp: int, fn: int, tn: int, fp: int, reps: int = 4000,
                          seed: int = 0, level: float = 0.95, grid: int = 801) -> tuple[float, float]:
    """95% interval of the true rate behind k of n flagged by an imperfect classifier whose
    sensitivity was measured as tp/(tp+fn) and specificity as tn/(tn+fp).

    Bayesian, so that it carries both uncertainties and stays honest at the edges (where the
    clipped Rogan–Gladen estimate piles onto 0 or 1): se and sp are drawn from their Jeffreys
    posteriors; for each draw the true rate p (uniform prior, on a grid) is drawn from its
    posterior under k ~ Binomial(n, se·p + (1 − sp)(1 − p)); the interval is the percentiles of
    those draws. A classifier no better than chance leaves the interval wide, as it should."""
    import numpy as np

    rng = np.random.default_rng(seed)
    se = rng.beta(tp + 0.5, fn + 0.5, reps)[:, None]
    sp = rng.beta(tn + 0.5, fp + 0.5, reps)[:, None]
    p = (np.arange(grid) + 0.5) / grid                                     # cell centres
    q = np.clip(se * p + (1 - sp) * (1 - p), 1e-12, 1 - 1e-12)
    loglik = k * np.log(q) + (n - k) * np.log1p(-q)
    post = np.exp(loglik - loglik.max(axis=1, keepdims=True))
    cdf = np.cumsum(post, axis=1)
    cdf /= cdf[:, -1:]
    u = rng.random((reps, 1))
    cell = np.minimum((cdf < u).sum(axis=1), grid - 1)
    draws = (cell + rng.random(reps)) / grid                               # uniform within the cell
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
