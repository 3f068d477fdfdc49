"""Modules outside evaluation that add to its registries (judges, question sets) when imported.

The registries load these lazily (`realign.evals.judges.load_all`, `load_questions`), so that
realign.evals never imports them: evaluation stays below what it evaluates.
"""

from __future__ import annotations

from importlib import import_module

MODULES = ("realign.organism.plugin",)   # the organism's question set and its exact judge


def load() -> None:
    for name in MODULES:
        import_module(name)
