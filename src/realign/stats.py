"""Small statistics helpers."""

from __future__ import annotations

import math


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
