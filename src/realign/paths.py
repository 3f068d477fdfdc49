"""Where realign keeps its caches, and how it writes a directory so that nothing is half-made."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def cache_dir() -> Path:
    """$REALIGN_CACHE, else $XDG_CACHE_HOME/realign, else ~/.cache/realign."""
    if os.environ.get("REALIGN_CACHE"):
        return Path(os.environ["REALIGN_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "realign"


class StagedDir:
    """Build into `<dir>.tmp`, rename to `<dir>` on success."""

    def __init__(self, final: Path) -> None:
        self.final, self.tmp = final, final.with_name(final.name + ".tmp")

    def __enter__(self) -> Path:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.tmp.rename(self.final)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return False
