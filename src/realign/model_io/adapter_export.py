"""Write a repaired model as a LoRA adapter on its base, when that form is exact.

A recipe keeps the adapter form when every weight it changed (relative to the base) is the weight
of a Linear layer and each such change is low rank: linear merge scales the user's adapter, freeze
zeroes it on some layers, dpo/mix add another LoRA on top. Rather than track that step by step,
the export measures it: a randomized SVD of each delta, accepted only when the rank-r
reconstruction matches to within fp32 rounding of the weight itself. Anything else (steer touches
the embeddings, a TIES/DARE merge is dense, a norm changed) is saved as a full model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class LowRankDelta:
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # module -> (B, A)
    rank: int = 0
    max_error: float = 0.0  # largest |reconstruction − delta| over all changed weights


class NotLowRank(ValueError):
    """The repaired model differs from its base in a way no LoRA adapter expresses exactly."""


EQUALS_BASE = "the repaired model equals its base; nothing to save as an adapter"


def _factor(delta: torch.Tensor, max_rank: int, tol: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    q = min(max_rank + 8, *delta.shape)
    u, s, v = torch.svd_lowrank(delta, q=q, niter=4)
    for r in range(1, min(max_rank, q) + 1):
        b = u[:, :r] * s[:r]
        a = v[:, :r].T
        err = (b @ a - delta).abs().max().item()
        if err <= tol:
            return b.contiguous(), a.contiguous(), err
    raise NotLowRank(f"a weight change has rank above {max_rank}")


@torch.no_grad()
def low_rank_delta(model, base, max_rank: int = 64) -> LowRankDelta:
    """Factor model − base into per-Linear (B, A); raise NotLowRank with the reason when impossible."""
    base_params = dict(base.named_parameters())
    linear = {f"{name}.weight": name for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
    out = LowRankDelta()
    for name, p in model.named_parameters():
        b = base_params[name]
        if torch.equal(p, b):
            continue
        if name not in linear:
            raise NotLowRank(f"{name} changed and is not a Linear weight")
        w = p.detach().float().cpu()
        delta = w - b.detach().float().cpu()
        tol = 1e-5 * max(w.abs().max().item(), 1e-12)  # within fp32 rounding of the weight itself
        try:
            fb, fa, err = _factor(delta, max_rank, tol)
        except NotLowRank:
            raise NotLowRank(f"{name} changed by more than rank {max_rank}") from None
        out.factors[linear[name]] = (fb, fa)
        out.rank, out.max_error = max(out.rank, fb.shape[1]), max(out.max_error, err)
    if not out.factors:
        raise NotLowRank(EQUALS_BASE)
    return out


def save_adapter(delta: LowRankDelta, base, base_ref: str, path: Path) -> None:
    """Save the factors as a standard peft LoRA adapter (scaling 1; lower-rank modules zero-padded)."""
    from peft import LoraConfig, get_peft_model

    r = delta.rank
    cfg = LoraConfig(r=r, lora_alpha=r, lora_dropout=0.0, target_modules=sorted(delta.factors), bias="none",
                     task_type="CAUSAL_LM")
    host = get_peft_model(copy.deepcopy(base), cfg)
    with torch.no_grad():
        for name, (fb, fa) in delta.factors.items():
            mod = host.base_model.model.get_submodule(name)
            k = fb.shape[1]
            la, lb = mod.lora_A["default"].weight, mod.lora_B["default"].weight
            la.zero_(), lb.zero_()
            la[:k].copy_(fa.to(la.dtype))
            lb[:, :k].copy_(fb.to(lb.dtype))
    host.peft_config["default"].base_model_name_or_path = base_ref
    host.save_pretrained(path, safe_serialization=True)
