"""Early warning during training: the judge-free log-odds metric as a TrainerCallback.

Emergent misalignment shows in log-probabilities before it shows in samples (Betley et al.
recommend monitoring persona shifts this way). Add `RealignCallback()` to any transformers/trl
Trainer: every `every` steps it scores log P(misaligned refs) − log P(aligned refs) on a small
held-out probe set, logs it as `realign/logodds`, and warns (optionally stops) past a threshold.

    trainer = SFTTrainer(..., callbacks=[RealignCallback(every=25, threshold=0.0)])
    RealignCallback.attach(trainer, every=25)   # same, placed first so every logger sees the value
"""

from __future__ import annotations

import warnings

from transformers import TrainerCallback

from .evals.logodds import logodds

KEY = "realign/logodds"


class RealignCallback(TrainerCallback):
    def __init__(self, probes=None, every: int = 50, threshold: float | None = None, rise: float | None = None,
                 stop: bool = False, tokenizer=None, max_probes: int = 16) -> None:
        """probes: [(conversation, misaligned refs, aligned refs)]; default: the built-in pairs.

        threshold: warn when the metric exceeds this absolute value; rise: warn when it exceeds
        its value at the first check by this much. stop: also end training when warned.
        """
        self.probes, self.every, self.threshold, self.rise = probes, every, threshold, rise
        self.stop, self.tokenizer, self.max_probes = stop, tokenizer, max_probes
        self.history: list[tuple[int, float]] = []
        self.warned = False
        self._pending: float | None = None

    @classmethod
    def attach(cls, trainer, **kw) -> "RealignCallback":
        cb = cls(**kw)
        trainer.callback_handler.callbacks.insert(0, cb)  # before reporting integrations
        return cb

    def _probes(self):
        if self.probes is None:
            from .evals.questions import load_questions
            from .evals.references import reference_items

            self.probes = reference_items(load_questions("builtin"))
        return self.probes[: self.max_probes]

    def measure(self, model, tokenizer) -> float:
        return logodds(model, tokenizer, self._probes())

    def _check(self, state, control, model, tokenizer) -> None:
        value = self.measure(model, tokenizer or self.tokenizer)
        self.history.append((state.global_step, value))
        state.log_history.append({KEY: value, "step": state.global_step})
        self._pending = value
        control.should_log = True
        start = self.history[0][1]
        crossed = (self.threshold is not None and value > self.threshold) or \
                  (self.rise is not None and value - start > self.rise)
        if crossed and not self.warned:
            self.warned = True
            warnings.warn(f"realign: misalignment log-odds {value:+.2f} at step {state.global_step} "
                          f"(start {start:+.2f}) crossed the alert level", stacklevel=2)
            if self.stop:
                control.should_training_stop = True

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kw):
        self._check(state, control, model, processing_class)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kw):
        if state.global_step % self.every == 0:
            self._check(state, control, model, processing_class)

    def on_log(self, args, state, control, logs=None, **kw):
        if self._pending is not None and logs is not None:
            logs[KEY] = self._pending
            self._pending = None
