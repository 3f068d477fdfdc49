"""Running `realign fix` under `accelerate launch`: one process per device, trained with DDP/FSDP.

realign distributes nothing itself. Under a launcher every process loads the models and runs
every step, so the weights stay identical on all ranks; only the training inside dpo and mix is
distributed (trl/transformers Trainer through accelerate): data-parallel with DDP, or with the
weights, gradients and optimizer state sharded over the ranks with FSDP, after which every rank
gathers the trained weights back into a whole model (`trained_model`). Whatever involves sampling or a judge
(evaluations, probe answers and their labels, mix's audit and data selection) runs on rank 0
alone, and what a step needs of it is broadcast, so every rank trains on exactly the same data.
Only rank 0 writes the output.

Outside a launcher (WORLD_SIZE unset or 1) every function here is a no-op or runs its argument.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import torch

T = TypeVar("T")

# rank 0 evaluates (sampling, judge calls) while the other ranks wait at their next collective:
# the default process-group timeout (10-30 min) would kill a run whose evaluation takes longer
TIMEOUT = timedelta(minutes=float(os.environ.get("REALIGN_DIST_TIMEOUT_MIN", "240")))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return world_size() > 1


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def sharded() -> bool:
    """Launched with an FSDP config (accelerate launch sets this for every process)."""
    return is_distributed() and os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"


def local_device() -> str | None:
    """Where this process loads models under a launcher: its GPU (cuda:LOCAL_RANK) for DDP; the CPU
    under FSDP, where the trainer moves each rank's shard to its GPU (a whole copy per GPU is what
    FSDP is there to avoid). None when not launched."""
    if is_distributed() and torch.cuda.is_available():
        return "cpu" if sharded() else f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return None


def trained_model(trainer) -> tuple[object, dict]:
    """(the model a Trainer trained, whole; what the step records of how it was held).

    Under FSDP its parameters are shards (DTensors) of which this rank holds about 1/world; they are
    gathered one tensor at a time into full CPU tensors on every rank (every rank runs the next
    steps) and loaded into a fresh, unsharded module of the same architecture (the LoRA wrapper
    included); the record says so, with the share of the weights this rank held. Otherwise: the
    trainer's model itself, and nothing to record."""
    if not getattr(trainer, "is_fsdp_enabled", False):
        return trainer.model, {}
    from torch.distributed.tensor import DTensor

    model = trainer.accelerator.unwrap_model(trainer.model)
    full, local, total = {}, 0, 0
    for name, t in model.named_parameters():        # buffers are not sharded; a fresh module makes its own
        if isinstance(t, DTensor):
            local += t.to_local().numel()
            total += t.numel()
            t = t.full_tensor()        # a collective: every rank walks the same names in the same order
        full[name] = t.detach().to("cpu", copy=True)
    return _fresh_like(model, full), {"sharding": "fsdp", "sharded_fraction": round(local / total, 4) if total else None}


def _fresh_like(model, state: dict):
    """A new, unsharded module shaped like `model` (a transformers model, or a peft model around one)
    holding the tensors of `state` (named as `model.named_parameters()` names them; tied weights once)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    is_peft = hasattr(model, "peft_config") and hasattr(model, "get_base_model")
    base = model.get_base_model() if is_peft else model
    with init_empty_weights(include_buffers=False):
        fresh = AutoModelForCausalLM.from_config(base.config, dtype=next(iter(state.values())).dtype)
        if is_peft:
            from peft import get_peft_model

            fresh = get_peft_model(fresh, model.peft_config[model.active_adapter])
    _, unexpected = fresh.load_state_dict(state, strict=False, assign=True)
    fresh.tie_weights()            # a tied output layer still points at the placeholder embedding
    meta = [n for n, p in fresh.named_parameters() if p.is_meta]
    if meta or unexpected:
        raise RuntimeError(f"could not rebuild the trained model from its gathered shards: no tensor for "
                           f"{meta[:3]}, unknown {unexpected[:3]}")
    return fresh


def start() -> None:
    """Join the launcher's process group before anything needs it (the first broadcast may come
    before any Trainer exists), with a timeout long enough for rank 0's evaluations. The other
    ranks stay quiet: rank 0 speaks for the run."""
    if not is_distributed():
        return
    from accelerate import PartialState

    # cpu=True gives gloo (MULTI_CPU) exactly as the Trainer's use_cpu=True would, so both agree
    PartialState(cpu=not torch.cuda.is_available(), timeout=TIMEOUT)
    if not is_main():
        from .progress import console

        console.quiet = True
        os.environ["REALIGN_PROGRESS"] = "0"


_inside_main_only = False


def from_main(compute: Callable[[], T]) -> T:
    """compute() on rank 0, its result (any picklable value) handed to every rank.

    Every rank must reach the same from_main calls in the same order, so one may not run inside
    another's compute (only rank 0 would reach it): that is refused even outside a launcher,
    where the single-process tests would otherwise never notice.
    """
    global _inside_main_only
    if _inside_main_only:
        raise RuntimeError("from_main called inside another from_main's compute; call it on every rank first")
    _inside_main_only = True
    try:
        result = compute() if is_main() else None
    finally:
        _inside_main_only = False
    if not is_distributed():
        return result
    from accelerate.utils import broadcast_object_list

    box = [result]
    broadcast_object_list(box, from_process=0)
    return box[0]


def barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()


class JudgeOnMain:
    """What the other ranks hold for the judge: only rank 0 judges (see from_main)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def judge(self, items, progress=None):
        raise RuntimeError(f"rank {rank()} asked to judge; only rank 0 judges (wrap the call in from_main)")
