"""Rich progress for long steps, including a TrainerCallback for transformers/trl trainers."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text
from transformers import TrainerCallback

console = Console(stderr=True)


LOG_EVERY_S = 30.0     # without a terminal (logs, CI, nohup): one progress line at most this often


def _enabled() -> bool:
    return os.environ.get("REALIGN_PROGRESS", "1") != "0"


@contextlib.contextmanager
def progress_bar(description: str, total: int) -> Iterator["Tick"]:
    """Progress of a long step with its rate (items/s): a rich bar on a terminal; elsewhere (a log
    file, CI) a plain line every LOG_EVERY_S seconds and one when the step ends. REALIGN_PROGRESS=0
    silences both."""
    if not _enabled():
        yield Tick(None, None)
        return
    if not sys.stderr.isatty():
        tick = LineTick(description, total)
        yield tick
        tick.finish()
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
                  transient=True) as prog:
        task = prog.add_task(description, total=total, info="")
        yield Tick(prog, task)


def _speed(rate: float | None) -> str:
    """Items per second, or seconds per item when slower than one a second."""
    return "" if not rate else f"{rate:.1f}/s" if rate >= 1 else f"{1 / rate:.1f} s each"


class RateColumn(ProgressColumn):
    """Items per second so far."""

    def render(self, task) -> Text:
        return Text(_speed(task.finished_speed or task.speed))


class Tick:
    def __init__(self, prog: Progress | None, task) -> None:
        self.prog, self.task = prog, task

    def __call__(self, n: int = 1, info: str | None = None) -> None:
        if self.prog is not None:
            kw = {"info": info} if info is not None else {}
            self.prog.update(self.task, advance=n, **kw)


class LineTick:
    """Progress as plain lines on stderr, for runs whose output goes to a file."""

    def __init__(self, description: str, total: int, clock=time.monotonic) -> None:
        self.description, self.total, self.clock = description, total, clock
        self.done, self.info, self.start = 0, "", clock()
        self.last, self.shown = self.start, 0      # when a line was last printed, and at what count

    def line(self) -> str:
        elapsed = self.clock() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        speed = _speed(rate) or "—"
        info = f", {self.info}" if self.info else ""
        return f"{self.description}: {self.done}/{self.total} ({speed}, {elapsed:.0f} s{info})"

    def __call__(self, n: int = 1, info: str | None = None) -> None:
        self.done += n
        self.info = info if info is not None else self.info
        if self.clock() - self.last >= LOG_EVERY_S:
            self._print()

    def finish(self) -> None:
        if self.done and self.done != self.shown:     # the last tick may have printed the end already
            self._print()

    def _print(self) -> None:
        self.last, self.shown = self.clock(), self.done
        print(self.line(), file=sys.stderr, flush=True)


class RichProgressCallback(TrainerCallback):
    """Shows training steps and the last logged loss in a rich bar."""

    def __init__(self, description: str) -> None:
        self.description = description
        self._ctx = None
        self._tick: Tick | None = None

    def on_train_begin(self, args, state, control, **kw):
        self._ctx = progress_bar(self.description, state.max_steps)
        self._tick = self._ctx.__enter__()

    def on_step_end(self, args, state, control, **kw):
        from .passes import count

        count("train_steps")                # optimizer steps, each one forward+backward per batch
        if self._tick:
            self._tick(1)

    def on_log(self, args, state, control, logs=None, **kw):
        if self._tick and logs and "loss" in logs:
            self._tick(0, info=f"loss {float(logs['loss']):.3f}")

    def on_train_end(self, args, state, control, **kw):
        if self._ctx:
            self._ctx.__exit__(None, None, None)
            self._ctx = self._tick = None


def quiet_libraries() -> None:
    """Silence library progress bars and per-step log prints; realign shows its own progress."""
    import logging
    import warnings

    for name in ("bitsandbytes", "peft", "trl", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    for cat in (UserWarning, FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=cat, module="(trl|peft|transformers|torch|accelerate)")


def drop_printer(trainer) -> None:
    """Trainer prints every log dict when tqdm is off; our rich bar shows the loss instead."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
