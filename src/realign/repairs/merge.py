"""merge: pull the finetune back toward its base, tensor by tensor.

θ = θ_base + α·T(θ_ft − θ_base), where T is the identity (linear / task arithmetic), TIES
trimming (keep the largest-magnitude `density` share of each delta; with one task vector the sign
election is trivial), DARE (drop a random 1−density share, rescale the rest), or a Safe LoRA
projection of each delta onto the alignment subspace (base − unaligned pretrained) when the
delta's cosine with its projection is below `threshold`.

The transformed delta T(θ_ft − θ_base) is computed once, tensor by tensor (for a full safetensors
checkpoint the finetune's weights are read from disk one tensor at a time), and kept only for
tensors the finetune changed — for a LoRA finetune, just the adapted matrices. Trying an α is
then one axpy per changed tensor, θ ← θ_base + α·T(Δ): no re-reading, no re-trimming.

`alpha: auto` bisects on task retention — the share of the finetune's task-NLL gain over the base
that survives, 0 at α = 0 and 1 at α = 1, and monotone in α in practice — for the smallest α
whose retention is at least `retention` (`steps` halvings, resolution 2^-steps), then checks that
α lowers the repair-side log-odds below the finetune's; if it does not, merging buys nothing
and the finetune is kept (α = 1, recorded). Cost: steps + 2 task passes and 2 log-odds passes,
whatever the model's depth — where a grid costs (task + log-odds) per grid point.

A LoRA finetune kept unmerged (fix does so when every step allows it) is merged linearly by
scaling the adapter's up-projections, B ← α·B: exactly θ_base + α·Δ, with no full-size delta
held and the base weights never touched (they serve as the base as well).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .base import RepairState, register

METHODS = ("linear", "ties", "dare", "safe_lora")


@dataclass
class MergeParams:
    alpha: float | str = "auto"     # 0 = base, 1 = finetune; "auto" = search on the cheap metrics
    method: str = "linear"          # linear | ties | dare | safe_lora
    density: float = 0.5            # ties/dare: share of each delta kept
    retention: float = 0.95         # alpha auto: minimum task retention
    steps: int = 5                  # alpha auto: bisection halvings (resolution 2^-steps)
    pretrained: str | None = None   # safe_lora: the unaligned pretrained model
    threshold: float = 0.5          # safe_lora: project deltas whose cosine is below this

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"merge.method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.alpha != "auto":
            try:
                self.alpha = float(self.alpha)
            except (TypeError, ValueError):
                raise ValueError(f"merge.alpha must be a number in [0, 1] or 'auto', not {self.alpha!r}") from None
            if not 0.0 <= self.alpha <= 1.0:
                raise ValueError(f"merge.alpha must be in [0, 1], not {self.alpha}")
        if not 1 <= int(self.steps) <= 20:
            raise ValueError(f"merge.steps must be between 1 and 20, not {self.steps}")
        self.steps = int(self.steps)
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"merge.density must be in (0, 1], not {self.density}")
        if self.method == "safe_lora" and not self.pretrained:
            raise ValueError("merge.method=safe_lora needs merge.pretrained=PATH (the unaligned pretrained model)")


class SafetensorsSource:
    """name -> tensor, read lazily from a checkpoint's *.safetensors files (one tensor in memory at a time)."""

    def __init__(self, directory: str | Path, names: list[str]) -> None:
        from safetensors import safe_open

        self._where: dict[str, Path] = {}
        for f in sorted(Path(directory).glob("*.safetensors")):
            with safe_open(f, "pt") as h:
                self._where.update({k: f for k in h.keys()})
        missing = [n for n in names if n not in self._where]
        if missing:
            raise KeyError(f"{missing[0]} is not in {directory}")

    def __getitem__(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(self._where[name], "pt") as h:
            return h.get_tensor(name)


def finetune_source(state: RepairState):
    """Where merge reads the finetune's weights: its files when untouched so far, else a CPU copy."""
    names = [n for n, _ in state.model.named_parameters()]
    if state.finetune_dir and not state.history:  # no earlier step changed the model
        try:
            return SafetensorsSource(state.finetune_dir, names)
        except (KeyError, OSError):
            pass  # renamed keys (e.g. a quantized or re-wrapped checkpoint): fall back to a copy
    return {k: v.detach().to("cpu", copy=True) for k, v in state.model.named_parameters()}


def transform_delta(delta: torch.Tensor, p: MergeParams, generator: torch.Generator | None = None) -> torch.Tensor:
    if p.method == "ties" and p.density < 1.0:
        k = max(1, int(round(p.density * delta.numel())))
        threshold = delta.abs().flatten().kthvalue(delta.numel() - k + 1).values
        return torch.where(delta.abs() >= threshold, delta, torch.zeros_like(delta))
    if p.method == "dare" and p.density < 1.0:
        keep = torch.rand(delta.shape, generator=generator, device=delta.device) < p.density
        return torch.where(keep, delta / p.density, torch.zeros_like(delta))
    return delta


def safe_lora_project(delta: torch.Tensor, aligned: torch.Tensor, unaligned: torch.Tensor, threshold: float):
    """Project a 2-D delta onto the alignment subspace V = aligned − unaligned when it strays."""
    if delta.dim() != 2:
        return delta
    if not delta.any():
        return delta                      # an unchanged tensor: nothing to project
    v = (aligned - unaligned).float()
    norm = torch.linalg.matrix_norm(v)
    if norm == 0:
        return delta
    # (V Vᵀ / ‖V‖) Δ computed as V (Vᵀ Δ) / ‖V‖: the same matrix, but the intermediate is
    # in × in instead of out × out, which for an embedding would be vocab × vocab (256 GiB at 262k)
    proj = v @ (v.T @ delta.float()) / norm
    cos = torch.nn.functional.cosine_similarity(delta.float().flatten(), proj.flatten(), dim=0)
    return proj.to(delta.dtype) if cos < threshold else delta


@torch.no_grad()
def transformed_deltas(model, base, finetune_sd, p: MergeParams,
                       pretrained_sd: dict[str, torch.Tensor] | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """name -> T(θ_ft − θ_base) on CPU, for the tensors the finetune changed (fp32; 16-bit models
    keep it in their own dtype, halving what is held)."""
    gen = torch.Generator().manual_seed(seed)
    base_params = dict(base.named_parameters())
    out = {}
    for name, param in model.named_parameters():
        b = base_params[name].detach().to("cpu", torch.float32)
        delta = finetune_sd[name].to("cpu", torch.float32) - b
        if not delta.any():
            continue                       # unchanged (e.g. outside a LoRA's target modules)
        if p.method == "safe_lora" and pretrained_sd is not None and name in pretrained_sd:
            delta = safe_lora_project(delta, b, pretrained_sd[name].to(torch.float32), p.threshold)
        else:
            delta = transform_delta(delta, p, gen)
        out[name] = delta if param.dtype in (torch.float32, torch.float64) else delta.to(param.dtype)
    return out


@torch.no_grad()
def set_alpha(model, base, deltas: dict[str, torch.Tensor], alpha: float) -> None:
    """θ ← θ_base + α·delta for each changed tensor (fp32 arithmetic); the rest already equal the base
    or the finetune, which agree there."""
    params, base_params = dict(model.named_parameters()), dict(base.named_parameters())
    for name, d in deltas.items():
        b = base_params[name].detach().to(torch.float32)
        params[name].copy_((b + alpha * d.to(b.device, torch.float32)).to(params[name].dtype))


def merge_into(model, base, finetune_sd, alpha: float, p: MergeParams,
               pretrained_sd: dict[str, torch.Tensor] | None = None, seed: int = 0) -> None:
    """Write base + alpha·T(ft − base) into `model`."""
    set_alpha(model, base, transformed_deltas(model, base, finetune_sd, p, pretrained_sd, seed), alpha)


def task_retention(nll: float, nll_base: float, nll_ft: float) -> float:
    gain = nll_base - nll_ft
    return 1.0 if gain <= 0 else (nll_base - nll) / gain


@register
class Merge:
    name = "merge"
    summary = "interpolate toward the base (linear / TIES / DARE / Safe LoRA); alpha auto by cheap metrics"
    Params = MergeParams

    @staticmethod
    def keeps_adapter(p: MergeParams) -> bool:
        """A linear merge of a LoRA finetune is a scaling of its adapter: no merged copy needed."""
        return p.method == "linear"

    def preflight(self, state, p) -> None:
        """What can be checked before anything is evaluated."""
        if p.alpha == "auto" and (not (state.train_conversations or state.task_conversations)
                                  or not state.repair_items):
            raise ValueError("merge.alpha=auto needs task data (--train-data or --task-data) and log-odds "
                             "probes; or give merge.alpha=0.5")
        if p.method == "safe_lora" and p.pretrained and not Path(p.pretrained).exists() \
                and not _looks_like_hub_id(p.pretrained):
            raise ValueError(f"merge.pretrained={p.pretrained} does not exist")
        if p.method == "safe_lora" and p.pretrained and Path(p.pretrained).is_dir():
            _check_same_shapes(Path(p.pretrained), state.base)

    def apply(self, state: RepairState, p: MergeParams) -> RepairState:
        from ..model_io.adapter_toggle import is_unmerged, scale_adapter, up_projections

        p.validate()
        if is_unmerged(state.model):
            if not self.keeps_adapter(p):
                raise ValueError(f"method {p.method} changes a LoRA finetune densely; load it merged")
            up = up_projections(state.model)
            changed, source = len(up), "adapter (scaled, kept unmerged)"
            set_to = lambda a: scale_adapter(state.model, up, a)  # noqa: E731
        else:
            ft_sd = finetune_source(state)
            pre_sd = None
            if p.method == "safe_lora":
                from ..model_io.checkpoint import load_model

                pre_sd = {k: v.detach().cpu() for k, v in
                          load_model(p.pretrained, what="pretrained").named_parameters()}
            deltas = transformed_deltas(state.model, state.base, ft_sd, p, pre_sd, state.seed)
            changed, source = len(deltas), "disk" if isinstance(ft_sd, SafetensorsSource) else "memory"
            del ft_sd, pre_sd
            set_to = lambda a: set_alpha(state.model, state.base, deltas, a)  # noqa: E731
        alpha, search, note = (p.alpha, [], None) if p.alpha != "auto" else self._search(state, p, set_to)
        set_to(float(alpha))
        chosen_on = {"task_chosen_on": state.repair_task_from()} if search else {}
        state.record(self.name, alpha=float(alpha), method=p.method, search=search, note=note,
                     changed_tensors=changed, finetune_from=source, **chosen_on)
        return state

    def _search(self, state: RepairState, p: MergeParams, set_to) -> tuple[float, list, str | None]:
        """alpha auto: bisect on task retention, then check the log-odds; the model is the
        finetune when called."""
        from ..evals.logodds import logodds
        from ..evals.task import assistant_token_metrics

        self.preflight(state, p)
        task = state.repair_task()
        nll = lambda m: assistant_token_metrics(m, state.tokenizer, task)["task_nll"]  # noqa: E731
        nll_ft, lo_ft, nll_base = nll(state.model), logodds(state.model, state.tokenizer, state.repair_items), \
            state.base_task_nll()
        search, note = [], None
        lo_a, hi_a = 0.0, 1.0          # retention(lo) < target <= retention(hi)
        for _ in range(p.steps):
            mid = (lo_a + hi_a) / 2
            set_to(mid)
            row = {"alpha": mid, "task_nll": nll(state.model)}
            row["retention"] = task_retention(row["task_nll"], nll_base, nll_ft)
            search.append(row)
            lo_a, hi_a = (lo_a, mid) if row["retention"] >= p.retention else (mid, hi_a)
        alpha = hi_a
        set_to(alpha)
        lo = logodds(state.model, state.tokenizer, state.repair_items)
        search.append({"alpha": alpha, "logodds": lo, "finetune_logodds": lo_ft})
        if not lo < lo_ft:
            note = f"alpha {alpha:g} does not lower the log-odds ({lo:.3f} vs {lo_ft:.3f}): finetune kept"
            alpha = 1.0
        return alpha, search, note


def _check_same_shapes(directory: Path, base) -> None:
    """Safe LoRA subtracts the pretrained model from the base tensor by tensor: refuse a pretrained
    model of another shape before anything is evaluated (reads only the safetensors headers)."""
    from safetensors import safe_open

    shapes = {}
    for f in sorted(directory.glob("*.safetensors")):
        with safe_open(f, "pt") as h:
            shapes.update({k: tuple(h.get_slice(k).get_shape()) for k in h.keys()})
    for name, param in base.named_parameters():
        if name in shapes and shapes[name] != tuple(param.shape):
            raise ValueError(f"merge.pretrained={directory} does not match the base: {name} is "
                             f"{list(shapes[name])} there and {list(param.shape)} in the base")


def _looks_like_hub_id(ref: str) -> bool:
    """owner/name with no local meaning: left to from_pretrained (users have a hub)."""
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not ref.startswith((".", "/", "~"))
