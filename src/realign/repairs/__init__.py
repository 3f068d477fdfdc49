"""Repairs: one module each, all registered in REPAIRS by name."""

from .base import REPAIRS, Repair, RepairState, register  # noqa: F401

_LOADED = False


def load_all() -> dict[str, type]:
    """Import every repair module (each registers itself) and return the registry."""
    global _LOADED
    if not _LOADED:
        from . import merge  # noqa: F401

        for name in ("dpo", "steer", "freeze", "mix", "harden"):
            try:
                __import__(f"{__name__}.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"{__name__}.{name}":
                    raise
        _LOADED = True
    return REPAIRS
