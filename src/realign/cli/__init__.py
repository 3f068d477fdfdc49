"""The `realign` command line. Thin: each command parses its options, calls library code and prints.

One module per command group, each registering its commands on the shared typer app (common.py):
evaluate.py (eval, judge), repair.py (fix, bench, push, recipes), builds.py (organism build|eval,
real build). `realign.cli:app` is the console script; `python -m realign.cli` runs it too.
"""

from __future__ import annotations

from . import builds, evaluate, repair  # noqa: F401  (registering their commands, in this order)
from .common import app, fail, out

__all__ = ["app", "fail", "main", "out"]


def main() -> None:
    app()
