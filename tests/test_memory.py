"""Peak memory per phase (realign.memory): resettable on Linux, nested phases, the fallback."""

import gc
import mmap
import sys

import pytest

from realign import memory

linux_hwm = pytest.mark.skipif(memory._hwm_kb() is None or not memory._reset_hwm(),
                               reason="needs a resettable VmHWM (Linux /proc)")
MB = 1 << 20


def _touch(mb: int) -> mmap.mmap:
    # A fresh anonymous mapping, every page written: memory that is surely new to the process.
    # (A plain bytes object can be carved out of heap the process freed earlier but still holds
    # resident, which raises no mark — it made these tests fail after a heavy test ran first.)
    block = mmap.mmap(-1, mb * MB)
    for offset in range(0, mb * MB, mmap.PAGESIZE):
        block[offset] = 1
    return block


@linux_hwm
def test_each_phase_gets_its_own_peak():
    with memory.peak_memory() as big:
        _touch(300).close()
    gc.collect()
    with memory.peak_memory() as small:
        pass
    assert big["rss_since"] == small["rss_since"] == "phase"
    # the second phase starts from a reset mark, so the freed 300 MB does not count again
    assert big["rss"] - small["rss"] > 250


@linux_hwm
def test_an_enclosing_phase_keeps_the_peak_an_inner_phase_reset():
    log = memory.PhasePeaks()
    log.begin("load")
    _touch(300).close()
    gc.collect()
    log.end("load")
    log.begin("step1")        # resets the mark: the run's total must still see the load peak
    log.end("step1")
    summary = log.summary()
    assert set(summary) == {"load", "step1", "total"}
    assert summary["total"]["rss"] >= summary["load"]["rss"] > summary["step1"]["rss"] + 250


def test_without_proc_the_peak_is_since_process_start(monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "_STATUS", tmp_path / "no-status")
    monkeypatch.setattr(memory, "_CLEAR_REFS", tmp_path / "no-dir" / "clear_refs")
    with memory.peak_memory() as peak:
        pass
    assert peak["rss_since"] == "process start"
    assert peak["rss"] == pytest.approx(memory._rusage_kb() / 1024, abs=1)


def test_cuda_peak_is_null_without_cuda(monkeypatch):
    monkeypatch.setattr(memory.torch.cuda, "is_available", lambda: False)
    with memory.peak_memory() as peak:
        pass
    assert peak["cuda"] is None and peak["rss"] > 0


FRAGMENTING = """
import sys, torch
from realign.memory import return_freed_memory

def rss_mb():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1]) / 1024

set_ = return_freed_memory() if sys.argv[1] == 'set' else None
big = torch.ones(4 << 20); del big              # a freed 16 MB block: glibc raises its mmap threshold to it
held = [torch.ones(256 << 10) for _ in range(300)]          # 300 tensors of 1 MB, as activations are
last = held[-1]
before = rss_mb()
del held
print(set_, before - rss_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_tensors_go_back_to_the_system_once_set():
    """Without it, glibc serves 1 MB tensors from its heap after a larger block was freed and keeps
    them when they are freed (the resident set does not drop); with it, freeing them returns ~300 MB."""
    import subprocess

    def released(mode: str) -> tuple[str, float]:
        out = subprocess.run([sys.executable, "-c", FRAGMENTING, mode], capture_output=True, text=True, check=True)
        flag, mb = out.stdout.split()
        return flag, float(mb)

    flag, mb = released("set")
    assert flag == "True" and mb > 250
    flag, mb = released("plain")
    assert flag == "None" and mb < 50          # the effect is the setting's, not the test's


def test_the_run_record_names_how_freed_host_memory_was_handled(monkeypatch):
    monkeypatch.setattr(memory, "_returning", False)
    monkeypatch.delenv(memory.MMAP_THRESHOLD_ENV, raising=False)
    assert memory.host_allocator() == "default"
    monkeypatch.setenv(memory.MMAP_THRESHOLD_ENV, "131072")
    assert memory.host_allocator() == "glibc, MALLOC_MMAP_THRESHOLD_=131072"
    assert memory.return_freed_memory() is False          # the environment's setting is left alone
