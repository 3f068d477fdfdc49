"""The organism's builds as `realign organism build|eval` name them: the configuration a size and
`key=value` overrides make (each its own cache key), and each seed's build found and evaluated for
the control table (organism.evaluate), or its base's in-context persona inference measured."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RealignError
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


def control_report(seeds: list[int] | None, seed: int, cfg: OrganismConfig, directory: Path | None = None,
                   samples: int = 12, sample_seed: int = 0, size: str = "default",
                   overrides: list[str] | None = None, persona_inference: bool = False) -> ControlReport:
    """Evaluate `directory` or the cached build of `seed` — or, with `seeds`, each seed's cached build,
    pooled (two-stage bootstrap over seeds and answers) — into the control table."""
    from ..stats import pct
    from .evaluate import control_table, pool

    per_seed, notes = {}, []
    for s, root, rows in evaluated_builds(seeds or [seed], cfg, directory, samples=samples,
                                          sample_seed=sample_seed, size=size, overrides=overrides):
        per_seed[s] = rows
        if persona_inference:
            found = base_persona_inference(root, sample_seed)
            notes.append(f"seed {s}: the base's in-context persona inference: misaligned chat after an insecure "
                         f"code turn {pct(found['misaligned_after_insecure'])}, after a secure one "
                         f"{pct(found['misaligned_after_secure'])}")
    if seeds:
        rows = pool(per_seed)
        shown = ", ".join(map(str, rows[0].seeds if rows else []))
        title = f"organism control table, {size} size, build seeds {shown} (held-out chat, oracle judge)"
    else:
        rows = per_seed[seed]
        title = f"organism control table ({root.name}, held-out chat, oracle judge)"
    columns, cells = control_table(rows)
    return ControlReport(title, columns, cells, rows, sum(len(r) for r in per_seed.values()), notes)
