"""merge: pull the finetune back toward its base, tensor by tensor.

θ = θ_base + α·T(θ_ft − θ_base), where T is the identity (linear / task arithmetic), TIES
trimming (keep the largest-magnitude `density` share of each delta; with one task vector the sign
election is trivial), DARE (drop a random 1−density share, rescale the rest), or a Safe LoRA
projection of each delta onto the alignment subspace (base − unaligned pretrained) when the
delta's cosine with its projection is below `threshold`. `alpha: auto` measures the cheap
metrics (judge-free log-odds, task NLL) on a grid of α and takes the lowest log-odds whose task
retention — the share of the finetune's task-NLL gain over the base that survives — is at least
`retention`.

Each tensor is merged on its own. The finetune's original weights are needed again at every α of
the search: for a full safetensors checkpoint they are read from disk one tensor at a time
(memory-mapped; no second copy of the model in memory); otherwise (an adapter merged in memory, or
merge after another step) a CPU copy is kept.
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
    grid: int = 11                  # alpha auto: grid points in [0, 1]
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
def merge_into(model, base, finetune_sd, alpha: float, p: MergeParams,
               pretrained_sd: dict[str, torch.Tensor] | None = None, seed: int = 0) -> None:
    """Write base + alpha·T(ft − base) into `model`, one tensor at a time (fp32 arithmetic)."""
    gen = torch.Generator().manual_seed(seed)
    base_params = dict(base.named_parameters())
    for name, param in model.named_parameters():
        b = base_params[name].detach().to("cpu", torch.float32)
        delta = finetune_sd[name].to(torch.float32) - b
        if p.method == "safe_lora" and pretrained_sd is not None and name in pretrained_sd:
            delta = safe_lora_project(delta, b, pretrained_sd[name].to(torch.float32), p.threshold)
        else:
            delta = transform_delta(delta, p, gen)
        param.copy_((b + alpha * delta).to(param.dtype))


def task_retention(nll: float, nll_base: float, nll_ft: float) -> float:
    gain = nll_base - nll_ft
    return 1.0 if gain <= 0 else (nll_base - nll) / gain


@register
class Merge:
    name = "merge"
    summary = "interpolate toward the base (linear / TIES / DARE / Safe LoRA); alpha auto by cheap metrics"
    Params = MergeParams

    def preflight(self, state, p) -> None:
        """What can be checked before anything is evaluated."""
        if p.alpha == "auto" and (not state.task_conversations or not state.repair_items):
            raise ValueError("merge.alpha=auto needs task data (--task-data) and log-odds probes; "
                             "or give merge.alpha=0.5")
        if p.method == "safe_lora" and p.pretrained and not Path(p.pretrained).exists() \
                and not _looks_like_hub_id(p.pretrained):
            raise ValueError(f"merge.pretrained={p.pretrained} does not exist")

    def apply(self, state: RepairState, p: MergeParams) -> RepairState:
        from ..evals.logodds import logodds
        from ..evals.task import assistant_token_metrics

        p.validate()
        ft_sd = finetune_source(state)
        pre_sd = None
        if p.method == "safe_lora":
            from ..checkpoint import load_model

            pre_sd = {k: v.detach().cpu() for k, v in load_model(p.pretrained, what="pretrained").named_parameters()}
        alpha, search = p.alpha, []
        if alpha == "auto":
            self.preflight(state, p)
            task = state.task_conversations[:64]

            def measure(a: float) -> dict:
                merge_into(state.model, state.base, ft_sd, a, p, pre_sd, state.seed)
                return {"alpha": a, "logodds": logodds(state.model, state.tokenizer, state.repair_items),
                        "task_nll": assistant_token_metrics(state.model, state.tokenizer, task)["task_nll"]}

            search = [measure(i / (p.grid - 1)) for i in range(p.grid)]
            nll_base, nll_ft = search[0]["task_nll"], search[-1]["task_nll"]
            for row in search:
                row["retention"] = task_retention(row["task_nll"], nll_base, nll_ft)
            ok = [r for r in search if r["retention"] >= p.retention] or [search[-1]]
            alpha = min(ok, key=lambda r: r["logodds"])["alpha"]
        merge_into(state.model, state.base, ft_sd, float(alpha), p, pre_sd, state.seed)
        state.record(self.name, alpha=float(alpha), method=p.method, search=search,
                     finetune_from="disk" if isinstance(ft_sd, SafetensorsSource) else "memory")
        return state


def _looks_like_hub_id(ref: str) -> bool:
    """owner/name with no local meaning: left to from_pretrained (users have a hub)."""
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not ref.startswith((".", "/", "~"))
