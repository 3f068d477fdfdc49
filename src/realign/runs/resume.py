"""Resuming `realign fix` after a kill: the state after each finished repair step, kept on disk.

fix builds its output in a hidden sibling of --out (`.OUT.realign-tmp`). After every finished
step it also keeps there, under `resume/`, what the next steps need:

* the model's weights — only the tensors that differ from the unchanged finetune (found by a
  blake2b digest of each tensor, taken once from the finetune as loaded), as safetensors;
* the RepairState's own results: history, locked parameters, the shared probes and the base's
  task NLL (recomputing those two would give the same values, but a later step's record of the
  passes it made would then differ from an uninterrupted run's);
* the timings and peak memory of the finished steps;
* a fingerprint of everything those steps' results depend on: the inputs' file hashes and the
  finetune's tensors as loaded, load options, seed, judge, backend, the data the repairs read,
  library versions, and the resolved parameters of the finished steps only — so a rerun that
  changes a later step (a lower batch size after running out of memory) still reuses the earlier ones.

A rerun of the same command finds the state, checks the fingerprint and continues after the last
finished step; a step that was interrupted runs again from the state before it. The state file
is replaced atomically (temp name, fsync, os.replace), so a kill while saving leaves the previous
state. Only a single process resumes: under `accelerate launch` no state is kept (each rank would
have to read rank 0's files, which need not be on a shared disk).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..paths import write_atomic, write_text_atomic
from ..progress import console
from ..repairs.base import StepRecord

FORMAT = 1              # bumped whenever what the state holds or means changes
STATE_DIR = "resume"


def tensor_digests(model) -> dict[str, str]:
    """name -> blake2b of dtype, shape and bytes, for every tensor of the state dict."""
    out = {}
    for name, t in model.state_dict().items():
        h = hashlib.blake2b(f"{t.dtype}{tuple(t.shape)}".encode(), digest_size=16)
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        out[name] = h.hexdigest()
    return out


def tied_groups(model) -> list[list[str]]:
    """Names of the state dict that share storage (tied embeddings), grouped."""
    by_storage: dict[tuple, list[str]] = {}
    for name, t in model.state_dict().items():
        by_storage.setdefault((t.device, t.untyped_storage().data_ptr(), t.storage_offset()), []).append(name)
    return sorted(sorted(g) for g in by_storage.values() if len(g) > 1)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _json_plain(obj):
    """obj as JSON gives it back: what realign.json will hold either way (tuples as lists …)."""
    return json.loads(json.dumps(obj, default=str))


@dataclass
class Saved:
    """The state after `step` finished steps, as read back from disk."""
    step: int
    steps: list[str]
    state: dict
    weights: Path


class Progress:
    """The resume state of one fix run in TMP/resume/ (see the module docstring).

    `enabled` False keeps nothing; `why_not` is the note a rerun that would resume prints then.
    """

    def __init__(self, tmp: Path, enabled: bool, why_not: str | None = None) -> None:
        self.tmp, self.dir = tmp, tmp / STATE_DIR
        self.enabled, self.why_not = enabled, why_not
        self.common: dict = {}
        self.finetune: dict[str, str] = {}
        self.tied: list[list[str]] = []

    # --- at the start ---------------------------------------------------------------------------

    def prepare(self, fresh: bool) -> None:
        """Clear an earlier run's leftovers: all of them when starting fresh (--no-resume) or when
        no state is kept, else all but the resume state, which find() judges once the inputs are known."""
        if not fresh and not self.enabled and self.why_not:
            console.print(f"note: {self.why_not}", soft_wrap=True)
        if fresh or not self.enabled:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        discard_output(self.tmp)

    def track(self, finetune, common: dict) -> None:
        """Remember the unchanged finetune's tensors and what every step's result depends on."""
        if not self.enabled:
            return
        try:
            self.finetune = tensor_digests(finetune)
        except (NotImplementedError, RuntimeError) as e:    # weights offloaded to meta/disk by a device map
            console.print(f"note: no resume for this model ({type(e).__name__}: {str(e)[:80]}): a killed run "
                          f"starts over when rerun", soft_wrap=True)
            self.enabled = False
            return
        self.tied = tied_groups(finetune)
        self.common = {"format": FORMAT, **common, "finetune_tensors": _digest(self.finetune), "tied": self.tied}

    def fingerprint(self, resolved_steps: list[dict]) -> str:
        return _digest({"common": self.common, "steps": resolved_steps})

    def find(self, resolved_steps: list[dict]) -> Saved | None:
        """The saved state when it belongs to this command's first steps; None (dropping a
        state of another command with a one-line note) otherwise."""
        if not self.enabled:
            return None
        try:
            state = json.loads((self.dir / "state.json").read_text())
        except (OSError, ValueError):
            shutil.rmtree(self.dir, ignore_errors=True)     # none, or not readable: start over
            return None
        k, n = state.get("step") if isinstance(state, dict) else None, len(resolved_steps)
        ours = isinstance(k, int) and 1 <= k <= n and state.get("fingerprint") == self.fingerprint(resolved_steps[:k])
        if not ours:
            console.print("note: discarding the saved progress of an earlier run (other inputs, recipe or "
                          "options); starting over", soft_wrap=True)
            shutil.rmtree(self.dir, ignore_errors=True)
            return None
        weights = self.dir / state["weights"]
        if not weights.is_file():
            console.print("note: the saved progress of an earlier run lacks its weights; starting over", soft_wrap=True)
            shutil.rmtree(self.dir, ignore_errors=True)
            return None
        names = [s["step"] for s in resolved_steps[:k]]
        console.print(f"resuming after step {k}/{n} ({'+'.join(names)} finished earlier; "
                      f"--no-resume starts over)", soft_wrap=True)
        return Saved(k, names, state, weights)

    # --- after the evaluations of base and finetune ---------------------------------------------

    def restore(self, saved: Saved, state) -> tuple[dict, dict] | None:
        """Load the saved weights into state.model (the unchanged finetune) and the saved
        results into state; returns the finished steps' (timings, peak memory), or None (and
        nothing changed) when the weights file cannot be read."""
        from safetensors.torch import load_file

        from ..repairs.probes import Probes

        targets = state.model.state_dict()
        try:
            tensors = load_file(str(saved.weights))
            for name, t in tensors.items():
                if name not in targets or targets[name].shape != t.shape or targets[name].dtype != t.dtype:
                    raise ValueError(f"saved tensor {name} does not fit the model")
        except Exception as e:     # any damage (safetensors raises its own error type): start over
            console.print(f"note: the saved weights could not be read ({type(e).__name__}); starting over",
                          soft_wrap=True)
            shutil.rmtree(self.dir, ignore_errors=True)
            return None
        with torch.no_grad():
            for name, t in tensors.items():
                targets[name].copy_(t)
        s = saved.state
        state.history = [StepRecord.from_json(h) for h in s["history"]]
        state.locked = set(s["locked"])
        state.probes = Probes(**s["probes"]) if s["probes"] is not None else None
        state._base_task_nll = dict(s["base_task_nll"])
        state.probe_cache = None          # probes are cached only while the model is the unchanged finetune
        return s["timings"], s["peak_memory_mb"]

    # --- after each finished step ---------------------------------------------------------------

    def save(self, step: int, resolved_steps: list[dict], state, timings: dict, peaks: dict) -> None:
        """Keep the state after `step` finished steps, with those steps' timings and peaks
        (memory.Peak) — best effort: a failure is a warning and turns saving off, the run goes on."""
        if not self.enabled:
            return
        try:
            self._save(step, resolved_steps, state, timings, peaks)
        except (OSError, RuntimeError, ValueError, TypeError) as e:
            # the previous state (if any) is still whole: a rerun after a kill continues from it
            console.print(f"[yellow]warning:[/] could not save the progress after step {step} "
                          f"({type(e).__name__}: {e}); saving no more of this run's steps", soft_wrap=True)
            self.enabled = False
            for partial in self.dir.glob(".*.tmp"):
                partial.unlink(missing_ok=True)

    def _save(self, step: int, resolved_steps: list[dict], state, timings: dict, peaks: dict) -> None:
        from safetensors.torch import save_file

        if tied_groups(state.model) != self.tied:
            raise ValueError("the step untied tensors the finetune shares")
        now = tensor_digests(state.model)
        if set(now) != set(self.finetune):
            raise ValueError("the step changed the model's tensor names")
        aliases = {n for g in self.tied for n in g[1:]}        # saved once, under the first name
        sd = state.model.state_dict()
        changed = {n: sd[n].detach().to("cpu").contiguous() for n, d in now.items()
                   if d != self.finetune[n] and n not in aliases}
        keys = [f"step{j}_{s['step']}" for j, s in enumerate(resolved_steps[:step], 1)]   # fix's phase names
        # the record as realign.json will hold it, so that resumed and uninterrupted runs agree
        history = _json_plain([h.to_json() for h in state.history])
        state.history = [StepRecord.from_json(h) for h in history]
        self.dir.mkdir(parents=True, exist_ok=True)
        weights = self.dir / f"weights-{step}.safetensors"
        write_atomic(weights, lambda p: save_file(changed, str(p), metadata={"format": str(FORMAT)}))
        record = {"format": FORMAT, "step": step, "fingerprint": self.fingerprint(resolved_steps[:step]),
                  "weights": weights.name, "history": history, "locked": sorted(state.locked),
                  "probes": dataclasses.asdict(state.probes) if state.probes is not None else None,
                  "base_task_nll": state._base_task_nll,
                  "timings": {k: timings[k] for k in keys if k in timings},
                  "peak_memory_mb": {k: peaks[k].as_dict() for k in keys if k in peaks}}
        write_text_atomic(self.dir / "state.json", json.dumps(record, default=str))
        for old in self.dir.glob("weights-*.safetensors"):
            if old.name != weights.name:
                old.unlink(missing_ok=True)

    # --- once the output is complete ------------------------------------------------------------

    def clear(self) -> None:
        """Drop the state: the output about to be renamed into place must not carry it."""
        shutil.rmtree(self.dir, ignore_errors=True)


def discard_output(tmp: Path) -> None:
    """Remove a partly written output from TMP, keeping the resume state (if any) for a rerun."""
    if not tmp.is_dir():
        return
    for p in tmp.iterdir():
        if p.name != STATE_DIR:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
    if not any(tmp.iterdir()):
        tmp.rmdir()


def progress_for(tmp: Path, quantized: bool) -> Progress:
    """The run's Progress: kept after each step (--no-resume too: only the start is fresh) except
    under a launcher and for 4/8-bit weights."""
    from ..distributed import is_distributed

    if is_distributed():
        return Progress(tmp, False, "no resume under accelerate launch (a single process only): "
                                    "a killed run starts over when rerun")
    if quantized:
        return Progress(tmp, False, "no resume with 4/8-bit weights: a killed run starts over when rerun")
    return Progress(tmp, True)
