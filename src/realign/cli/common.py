"""What every command module of the CLI shares: the typer apps, the console, `fail` and `or_fail`,
the options several commands declare alike, and the tables they print."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..errors import RealignError
from ..evals.result import Evaluation
from ..options import BASE, CHECKPOINT

app = typer.Typer(help="Repair LLM finetunes that became misaligned.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
organism_app = typer.Typer(help="The synthetic model organism (tiny model, exact judge).", no_args_is_help=True)
app.add_typer(organism_app, name="organism")
real_app = typer.Typer(help="Real misaligned finetunes of real chat models, built offline.", no_args_is_help=True)
app.add_typer(real_app, name="real")
# wide tables even when piped (rich would wrap at 80 columns)
out = Console(width=None if sys.stdout.isatty() else 160)


@app.callback()
def _setup() -> None:
    from ..progress import quiet_libraries

    quiet_libraries()


# options of the commands' own (an option of the library's lives with its dataclass: realign.options)
CheckpointArg = Annotated[str, typer.Argument(help=CHECKPOINT)]
BaseOpt = Annotated[str | None, typer.Option(help=BASE)]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override a parameter: step.param=value")]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="write the summary JSON here")]


def fail(msg: str, code: int = 2) -> None:
    from rich.markup import escape

    # escaped: messages quote user paths and pip extras ("realign[vllm]") that rich would eat as tags
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(msg)}", highlight=False)
    raise typer.Exit(code)


def or_fail(fn, *args, errors: tuple[type[Exception], ...] = (RealignError,), hint: str = "", **kwargs):
    """fn(*args, **kwargs), its user-facing errors (`errors`) said in one line (with `hint` after them)."""
    try:
        return fn(*args, **kwargs)
    except errors as e:
        fail(f"{e}" + (f"; {hint}" if hint else ""))


def table(title: str, columns, rows, left=None) -> Table:
    """A table of text rows: the first column (or the columns named in `left`) left-aligned, the rest right."""
    t = Table(title=title)
    for col in columns:
        t.add_column(col, justify="left" if col in (left or columns[:1]) else "right")
    for row in rows:
        t.add_row(*row)
    return t


def summary_table(title: str, results: dict[str, Evaluation]) -> Table:
    """One row per model (and per triggered evaluation), as report.md has it (runs.report.metrics_rows)."""
    from ..runs.report import metrics_rows

    header, rows, _ = metrics_rows(results)
    return table(title, header, rows)


def print_evaluation(title: str, results: dict[str, Evaluation]) -> None:
    """The summary table, then lm-eval's numbers per model when a --task-metric lm-eval:… gave any."""
    from ..runs.report import standard_eval_rows

    out.print(summary_table(title, results))
    rows = standard_eval_rows(results)
    if rows:
        out.print(table("lm-eval (± standard error)", ["metric", *results], rows))


def print_trust(trust: dict) -> None:
    """Name the judge with its measured agreement (calibration.describe_judge); warn when it is a weak proxy."""
    style = "[yellow]warning:[/] " if trust["weak"] else ""
    out.print(f"{style}judge {trust['judge']}: {trust['note']}", highlight=False)
