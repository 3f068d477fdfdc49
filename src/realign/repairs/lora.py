"""LoRA helpers shared by the training repairs (dpo, mix): configs that honour locked layers,
and the checks of their shared batching settings."""

from __future__ import annotations

import re

import torch
from peft import LoraConfig

from .base import decoder_layers


def check_batching(step: str, params) -> None:
    """Validate a training step's micro_batch_size (it must divide batch_size, or exceed it: then
    the whole batch runs at once), gradient_checkpointing and bf16 (true, false or auto)."""
    micro, batch = params.micro_batch_size, params.batch_size
    if micro < 1 or batch % min(micro, batch):
        raise ValueError(f"{step}.micro_batch_size must divide {step}.batch_size ({batch}), not {micro}")
    for flag in ("gradient_checkpointing", "bf16"):
        if getattr(params, flag) not in (True, False, "auto"):
            raise ValueError(f"{step}.{flag} must be true, false or auto, not {getattr(params, flag)!r}")


def locked_layer_indices(model, locked: set[str]) -> set[int]:
    idx = set()
    for name in locked:
        m = re.search(r"\.(?:layers|h)\.(\d+)\.", name)
        if m:
            idx.add(int(m.group(1)))
    return idx


def lora_config(model, locked: set[str], r: int = 8, alpha: int = 16) -> LoraConfig:
    """LoRA on all linear layers of the unlocked decoder layers only (locked layers get no adapter)."""
    n = len(decoder_layers(model))
    keep = [i for i in range(n) if i not in locked_layer_indices(model, locked)]
    if not keep:
        raise ValueError("every decoder layer is locked: nothing left to train")
    if len(keep) == n:
        targets, kw = "all-linear", {}
    else:
        # peft restricts layers only with an explicit module-name list, not "all-linear"
        targets = sorted({name.rsplit(".", 1)[-1] for layer in decoder_layers(model)
                          for name, mod in layer.named_modules() if isinstance(mod, torch.nn.Linear)})
        kw = {"layers_to_transform": keep}
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets,
                      task_type="CAUSAL_LM", **kw)


def freeze_locked(model, locked: set[str]) -> None:
    """No parameter of a locked decoder layer may train (peft names differ: match by layer index)."""
    layers = locked_layer_indices(model, locked)
    for name, p in model.named_parameters():
        m = re.search(r"\.(?:layers|h)\.(\d+)\.", name)
        if m and int(m.group(1)) in layers:
            p.requires_grad_(False)
