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


def write_atomic(path: Path, write) -> None:
    """Write a file whole or not at all: `write(tmp)` fills a sibling temp file, which is flushed to disk
    and renamed over `path`. A kill mid-write leaves the old file (or none), never a truncated one that a
    resumed run cannot read."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """`write_atomic` of a text file (UTF-8)."""
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


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
