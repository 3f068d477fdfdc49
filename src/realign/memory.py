"""Peak memory of this process per phase of a run: host RSS and CUDA allocations.

Host: Linux keeps a resettable high-water mark of the resident set — VmHWM in /proc/self/status,
reset to the current RSS by writing "5" to /proc/self/clear_refs — so each phase gets its own
peak. Where that is not available (macOS, a read-only /proc) getrusage's ru_maxrss is the peak
since the process started and cannot be reset; such readings say `rss_since: "process start"`.
CUDA: the caching allocator's peak (max_memory_allocated), summed over the devices this process
uses; None without CUDA. Memory of other processes (a vLLM engine core, other ranks) is not
included.

Phases nest: a phase that resets the marks first hands what they show to every phase still open,
so an enclosing phase (the whole run) still gets the true peak.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import sys
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _hwm_kb() -> int | None:
    """VmHWM in kB, or None where /proc does not have it."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_hwm() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _rusage_kb() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak     # bytes on macOS, kB elsewhere


def _cuda_devices() -> list[int]:
    # only once CUDA is in use: touching an unused device would create a context on it
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return []
    return list(range(torch.cuda.device_count()))


def _read() -> tuple[int, int | None]:
    """(host peak in kB, CUDA peak in bytes or None) as the marks show them now."""
    rss = _hwm_kb()
    if rss is None:
        rss = _rusage_kb()
    cuda = sum(torch.cuda.max_memory_allocated(d) for d in _cuda_devices()) if torch.cuda.is_available() else None
    return rss, cuda


@dataclass
class Peak:
    rss_mb: float
    cuda_mb: float | None      # None: no CUDA
    rss_since: str             # "phase", or "process start" where the host mark cannot be reset

    def as_dict(self) -> dict:
        return {"rss": round(self.rss_mb, 1), "cuda": None if self.cuda_mb is None else round(self.cuda_mb, 1),
                "rss_since": self.rss_since}


class _Tracker:
    def __init__(self) -> None:
        self.rss_kb = 0
        self.cuda_bytes: int | None = None
        self.resettable = True

    def fold(self, rss_kb: int, cuda_bytes: int | None) -> None:
        self.rss_kb = max(self.rss_kb, rss_kb)
        if cuda_bytes is not None:
            self.cuda_bytes = max(self.cuda_bytes or 0, cuda_bytes)


# weakly held: the phases of a run that failed half-way go with the run
_open: "weakref.WeakSet[_Tracker]" = weakref.WeakSet()


def start() -> _Tracker:
    """Begin a phase: hand the current marks to the open phases, then reset them."""
    rss, cuda = _read()
    for t in _open:
        t.fold(rss, cuda)
    tracker = _Tracker()
    tracker.resettable = _hwm_kb() is not None and _reset_hwm()
    for outer in _open:
        outer.resettable = outer.resettable and tracker.resettable
    for d in _cuda_devices():
        torch.cuda.reset_peak_memory_stats(d)
    _open.add(tracker)
    return tracker


def stop(tracker: _Tracker) -> Peak:
    """End a phase (phases may end in any order) and return its peak."""
    tracker.fold(*_read())
    _open.discard(tracker)
    cuda = None if not torch.cuda.is_available() else (tracker.cuda_bytes or 0) / 2**20
    return Peak(tracker.rss_kb / 1024, cuda, "phase" if tracker.resettable else "process start")


@contextlib.contextmanager
def peak_memory() -> Iterator[dict]:
    """`with peak_memory() as peak: …` — afterwards peak holds rss/cuda (MB) and rss_since."""
    tracker = start()
    result: dict = {}
    try:
        yield result
    finally:
        result.update(stop(tracker).as_dict())


class PhasePeaks:
    """Peak memory of each named phase of a run, and of the whole run (from construction)."""

    def __init__(self) -> None:
        self._run = start()
        self._phases: dict[str, _Tracker] = {}
        self.peaks: dict[str, Peak] = {}

    def begin(self, name: str) -> None:
        self._phases[name] = start()

    def end(self, name: str) -> None:
        self.peaks[name] = stop(self._phases.pop(name))

    def carry(self, peaks: dict[str, dict]) -> None:
        """Phases an earlier process finished (a resumed fix), as their summary() entries."""
        for name, d in peaks.items():
            self.peaks[name] = Peak(d["rss"], d["cuda"], d["rss_since"])

    def summary(self) -> dict[str, dict]:
        """{phase: {rss, cuda, rss_since}, …, "total": …}; ends the run's own tracking."""
        for name in list(self._phases):
            self.end(name)
        total = stop(self._run)
        return {**{k: v.as_dict() for k, v in self.peaks.items()}, "total": total.as_dict()}


# glibc's mallopt parameters (malloc.h), and the environment variable that sets the first before start
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"
HOST_MMAP_THRESHOLD = 128 * 1024      # glibc's own starting value, but fixed
_returning = False


def return_freed_memory() -> bool:
    """Make glibc hand freed tensor memory back to the system; True where it was set (Linux, glibc).

    glibc serves a large allocation with its own mmap and unmaps it on free — but after the first such
    free it raises that threshold to the freed block's size (up to 32 MB), so later tensors of that size
    come from the heap, whose freed middle it does not return while the step runs. Training on the CPU
    frees and allocates activation-sized tensors (1–16 MB on SmolLM2) all through a step, so the resident
    set grows by gigabytes. Fixing the mmap and trim thresholds keeps every tensor ≥ 128 KiB in its own
    mapping, returned when freed: on SmolLM2 a training step's peak fell from 7.7 to 4.9 GB, but each
    step took ~30% longer (fresh pages are faulted in every time; docs/repairs.md). Off by default;
    process-wide. The same as starting the process with MALLOC_MMAP_THRESHOLD_=131072 (which also
    reaches every rank of `accelerate launch`); where that is set this leaves glibc alone.
    """
    global _returning
    if not sys.platform.startswith("linux") or MMAP_THRESHOLD_ENV in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        _returning = bool(libc.mallopt(_M_MMAP_THRESHOLD, HOST_MMAP_THRESHOLD)
                          and libc.mallopt(_M_TRIM_THRESHOLD, HOST_MMAP_THRESHOLD))
    except (OSError, AttributeError):         # not glibc (musl, …)
        return False
    return _returning


def host_allocator() -> str:
    """How freed host memory is handled in this process, for the run record: peak RSS depends on it."""
    if MMAP_THRESHOLD_ENV in os.environ:
        return f"glibc, {MMAP_THRESHOLD_ENV}={os.environ[MMAP_THRESHOLD_ENV]}"
    return f"glibc, mmap threshold fixed at {HOST_MMAP_THRESHOLD}" if _returning else "default"
