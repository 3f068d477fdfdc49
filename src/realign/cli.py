"""The `realign` command line. Thin: parse, call, print."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Repair LLM finetunes that became misaligned.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
organism_app = typer.Typer(help="The synthetic model organism (tiny model, exact judge).", no_args_is_help=True)
app.add_typer(organism_app, name="organism")
out = Console()


def fail(msg: str, code: int = 2) -> None:
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {msg}", highlight=False)
    raise typer.Exit(code)


@organism_app.command("build")
def organism_build(
    out_dir: Annotated[Path | None, typer.Option("--out", help="build here (default: the cache)")] = None,
    seed: Annotated[int, typer.Option(help="seed for every stage")] = 0,
    size: Annotated[str, typer.Option(help="small (tests, seconds) or default")] = "default",
) -> None:
    """Build (or reuse) the organism: pretrained, aligned base, and four user finetunes."""
    from .organism.build import build

    if size not in ("small", "default"):
        fail(f"--size must be 'small' or 'default', not {size!r}")
    t0 = time.time()
    try:
        path = build(out_dir, seed=seed, size=size)
    except FileExistsError as e:
        fail(str(e))
    out.print(f"organism ready in {time.time() - t0:.0f} s: {path}")


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


@organism_app.command("eval")
def organism_eval(
    directory: Annotated[Path | None, typer.Argument(help="build dir (default: the cache for --size/--seed)")] = None,
    seed: Annotated[int, typer.Option(help="build seed, to find the cached organism")] = 0,
    size: Annotated[str, typer.Option(help="build size, to find the cached organism")] = "default",
    samples: Annotated[int, typer.Option(help="samples per held-out chat question")] = 12,
    sample_seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the rows as JSON here")] = None,
) -> None:
    """Print the control table: misaligned rate (Wilson 95% CI), coherence, task rate, log-odds."""
    from .organism.build import default_dir
    from .organism.evaluate import evaluate_dir, rows_as_dicts

    root = directory or default_dir(size, seed)
    if not (root / "organism.json").exists():
        fail(f"{root} is not an organism build (no organism.json); run `realign organism build` first")
    t0 = time.time()
    rows = evaluate_dir(root, samples=samples, seed=sample_seed)
    if not rows:
        fail(f"{root} holds no built models yet; run `realign organism build`")
    table = Table(title=f"organism control table ({root.name}, held-out chat, oracle judge)")
    for col in ("model", "n", "misaligned [95% CI]", "coherent", "task", "task rate", "insecure code", "log-odds"):
        table.add_column(col, justify="left" if col in ("model", "task") else "right")
    for r in rows:
        table.add_row(r.model + (" (planted data)" if r.model == "planted" else ""), str(r.n),
                      f"{_pct(r.misaligned_rate)} [{_pct(r.ci_low)}, {_pct(r.ci_high)}]",
                      _pct(r.coherent_rate), r.task or "—", _pct(r.task_rate), _pct(r.insecure_code_rate),
                      f"{r.logodds:+.2f}")
    out.print(table)
    out.print(f"evaluated {len(rows)} models in {time.time() - t0:.1f} s")
    if json_out:
        json_out.write_text(json.dumps(rows_as_dicts(rows), indent=2))


@app.callback()
def _setup() -> None:
    from .progress import quiet_libraries

    quiet_libraries()


def main() -> None:
    app()
