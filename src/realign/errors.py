"""Errors the CLI reports as one line (no traceback)."""


class RealignError(Exception):
    """A user-facing problem: bad input, a missing file, an impossible option."""
