"""Whole passes a piece of work makes over a set of items, by kind ("generation", "scoring",
"backward", "activations", "kl", "train_steps"): repairs are compared by how many they make.

Each entry point counts itself once per call with `count(kind)`; whoever wants the figure opens
`with tally() as passes:` around the work and reads the Counter afterwards. Tallies nest (every
open one counts) and live in a context variable, so no module-level number is diffed before
and after, and this module sits below everything that counts (it imports nothing of realign).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from contextvars import ContextVar

_open: ContextVar[tuple[Counter, ...]] = ContextVar("realign_open_tallies", default=())


def count(kind: str, n: int = 1) -> None:
    """One (or n) whole passes of `kind`, added to every open tally."""
    for tally_ in _open.get():
        tally_[kind] += n


@contextlib.contextmanager
def tally() -> Iterator[Counter]:
    """`with tally() as passes: …` — afterwards `passes` holds the passes made inside."""
    passes: Counter = Counter()
    token = _open.set((*_open.get(), passes))
    try:
        yield passes
    finally:
        _open.reset(token)
