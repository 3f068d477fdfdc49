"""Where realign keeps its caches."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$REALIGN_CACHE, else $XDG_CACHE_HOME/realign, else ~/.cache/realign."""
    if os.environ.get("REALIGN_CACHE"):
        return Path(os.environ["REALIGN_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "realign"
