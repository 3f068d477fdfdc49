"""The organism's builds as `realign organism build|eval` name them: the configuration a size and
`key=value` overrides make (each its own cache key), and each seed's build found and evaluated for
the control table (organism.evaluate), or its base's in-context persona inference measured."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RealignError
from ..options import OrganismBuild, OrganismEval, comma_list
from .config import OrganismConfig

SIZES = ("small", "default")


def configured(size: str, overrides: list[str] | None = None) -> OrganismConfig:
    """The size's preset with `key=value` overrides (docs/organism.md); a bad size or key is a ValueError."""
    from .config import preset
    from .overrides import apply_overrides

    if size not in SIZES:
        raise ValueError(f"--size must be 'small' or 'default', not {size!r}")
    return apply_overrides(preset(size), overrides or [])


def evaluated_builds(seeds: list[int], cfg: OrganismConfig, directory: Path | None = None, samples: int = 12,
                     sample_seed: int = 0, size: str = "default", overrides: list[str] | None = None,
                     ) -> Iterator[tuple[int, Path, list]]:
    """(seed, build dir, its control rows) for each seed in turn: `directory`, or the seed's cached build of
    `cfg`. A missing or empty build is a RealignError naming the `realign organism build` command (with
    the `size` and `overrides` that made `cfg`) that makes it."""
    from .build import default_dir
    from .evaluate import evaluate_dir

    options = "".join([f" --size {size}" if size != "default" else "", *(f" --set {o}" for o in overrides or [])])
    for seed in seeds:
        root = directory or default_dir(seed=seed, cfg=cfg)
        build_cmd = f"`realign organism build --seed {seed}{options}`"
        if not (root / "organism.json").exists():
            raise RealignError(f"{root} is not an organism build (no organism.json); run {build_cmd} first")
        rows = evaluate_dir(root, samples=samples, seed=sample_seed)
        if not rows:
            raise RealignError(f"{root} holds no built models yet; run {build_cmd}")
        yield seed, root, rows


def base_persona_inference(root: Path, seed: int = 0) -> dict[str, float]:
    """organism.evaluate.persona_inference of the build's aligned base: its misaligned chat rate after
    an insecure and after a secure code turn."""
    from . import evaluate

    model, tok = evaluate.load_model(root / "base")
    return evaluate.persona_inference(model, tok, seed=seed)


@dataclass
class ControlReport:
    """`realign organism eval`'s output: the control table of one build, or pooled over build seeds."""

    title: str
    columns: list[str]
    cells: list[list[str]]
    rows: list                     # OrganismRow per model, or PooledRow over the seeds (for --json)
    models: int                    # models evaluated, over every seed
    notes: list[str] = field(default_factory=list)      # the base's persona inference per seed, when asked


def build_all(req: OrganismBuild) -> Iterator[tuple[int, Path, float]]:
    """Build (or reuse) each asked seed's organism in turn: (seed, its dir, seconds). A bad size, key,
    seed list or finetune name is a ValueError before anything is built."""
    from .build import build

    cfg = configured(req.which.size, req.which.overrides)
    seeds = req.which.seed_list()
    if len(seeds) > 1 and req.out is not None:
        raise ValueError("give either --out or several --seeds (each seed builds into its own cached dir)")
    names = tuple(comma_list(req.finetunes or ""))
    for seed in seeds:
        t0 = time.time()
        path = build(req.out, seed=seed, cfg=cfg, from_scratch=req.from_scratch, **({"finetunes": names} if names else {}))
        yield seed, path, time.time() - t0


def control_report(req: OrganismEval) -> ControlReport:
    """Evaluate `req.directory` or the cached build of the one seed asked — or, with several seeds, each
    seed's cached build, pooled (two-stage bootstrap over seeds and answers) — into the control table."""
    from ..stats import pct
    from .evaluate import control_table, pool

    seeds, size, overrides = req.which.seed_list(), req.which.size, req.which.overrides
    if len(seeds) > 1 and req.directory is not None:
        raise ValueError("give either a build dir or several --seeds (which finds each seed's cached build)")
    per_seed, notes = {}, []
    for s, root, rows in evaluated_builds(seeds, configured(size, overrides), req.directory, samples=req.samples,
                                          sample_seed=req.sample_seed, size=size, overrides=overrides):
        per_seed[s] = rows
        if req.persona_inference:
            found = base_persona_inference(root, req.sample_seed)
            notes.append(f"seed {s}: the base's in-context persona inference: misaligned chat after an insecure "
                         f"code turn {pct(found['misaligned_after_insecure'])}, after a secure one "
                         f"{pct(found['misaligned_after_secure'])}")
    if len(seeds) > 1:
        rows = pool(per_seed)
        shown = ", ".join(map(str, rows[0].seeds if rows else []))
        title = f"organism control table, {size} size, build seeds {shown} (held-out chat, oracle judge)"
    else:
        rows = per_seed[seeds[0]]
        title = f"organism control table ({root.name}, held-out chat, oracle judge)"
    columns, cells = control_table(rows)
    return ControlReport(title, columns, cells, rows, sum(len(r) for r in per_seed.values()), notes)
