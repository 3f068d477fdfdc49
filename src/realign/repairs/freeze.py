"""freeze: find the decoder layers that carry the misalignment, restore them to the base, lock them.

Attribution in a fixed number of passes, whatever the depth. Restoring layer ℓ moves its weights
by Δℓ = θbase,ℓ − θft,ℓ; to first order that changes a loss ℓ(θ) by ⟨∇ℓ, Δℓ⟩. One forward+backward
pass of the repair-side log-odds and one of the task NLL therefore predict, for every layer at
once, how much restoring it lowers the log-odds (good) and raises the task NLL (cost). A layer's
score is the drop per unit of cost. First order can misjudge large deltas, so the top `verify`
layers are then measured exactly (swap in the base's layer, score, swap back) and re-ranked.

The top `k` layers (or, with `k: auto`, verified layers taken greedily by exact score while task
retention stays above `retention` and the log-odds keeps falling) are restored to the base and
locked: later training steps in the recipe (dpo, mix) leave them exactly equal to the base.

Cost: 1 scoring + 2 forward/backward passes for the attribution, then 2 scoring passes per
verified layer and per greedy step beyond the first — constant in the number of layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import RepairState, decoder_layers, register, rounded_rows
from .merge import task_retention


@dataclass
class FreezeParams:
    k: int | str = "auto"          # number of layers to restore and lock, or "auto"
    retention: float = 0.95        # auto: minimum task retention
    max_share: float = 0.5         # auto: never restore more than this share of the layers
    verify: int = 3                # exact checks of the best first-order candidates

    def validate(self) -> None:
        if self.k != "auto":
            try:
                self.k = int(self.k)
            except (TypeError, ValueError):
                raise ValueError(f"freeze.k must be an integer or 'auto', not {self.k!r}") from None
            if self.k < 0:
                raise ValueError("freeze.k must be >= 0")
        if int(self.verify) < 1:
            raise ValueError("freeze.verify must be >= 1")
        self.verify = int(self.verify)


@torch.no_grad()
def _copy_layer(dst_layer, src_layer) -> None:
    for (_, d), (_, s) in zip(dst_layer.named_parameters(), src_layer.named_parameters()):
        d.copy_(s.to(d.dtype))


def _per_layer_inner(layers, base_layers) -> list[float]:
    """⟨grad, θbase − θ⟩ of each layer (fp32 accumulation), from the gradients now in .grad."""
    out = []
    with torch.no_grad():
        for layer, base_layer in zip(layers, base_layers):
            total = 0.0
            for p, b in zip(layer.parameters(), base_layer.parameters()):
                if p.grad is not None:
                    total += float((p.grad.float() * (b.to(p.device).float() - p.float())).sum())
            out.append(total)
    return out


def first_order_attribution(model, base, tokenizer, items, task) -> dict:
    """Predicted log-odds drop and task-NLL rise of restoring each layer, from two backward passes."""
    from ..evals.logodds import logodds_backward
    from ..evals.task import task_nll_backward

    layers, base_layers = decoder_layers(model), decoder_layers(base)
    flags = {p: p.requires_grad for p in model.parameters()}
    layer_params = {p for layer in layers for p in layer.parameters()}
    for p in model.parameters():       # gradients only where they are read
        p.requires_grad_(p in layer_params)
        p.grad = None
    was_training = model.training
    model.eval()
    try:
        lo = logodds_backward(model, tokenizer, items)
        lo_change = _per_layer_inner(layers, base_layers)
        model.zero_grad(set_to_none=True)
        nll, nll_change = None, [0.0] * len(layers)
        if task:
            nll = task_nll_backward(model, tokenizer, task)
            nll_change = _per_layer_inner(layers, base_layers)
    finally:
        model.zero_grad(set_to_none=True)
        for p, f in flags.items():
            p.requires_grad_(f)
        model.train(was_training)
    return {"logodds": lo, "task_nll": nll, "drop": [-c for c in lo_change], "rise": nll_change}


def _score(drop: float, rise: float | None) -> float:
    return drop / max(rise if rise is not None else 0.0, 1e-3)


@register
class Freeze:
    name = "freeze"
    summary = "restore the layers that carry the misalignment to the base and lock them for later steps"
    Params = FreezeParams

    def apply(self, state: RepairState, p: FreezeParams) -> RepairState:
        from ..evals.logodds import logodds
        from ..evals.task import assistant_token_metrics

        p.validate()
        if not state.repair_items:
            raise ValueError("freeze needs log-odds probe items")
        layers, base_layers = decoder_layers(state.model), decoder_layers(state.base)
        task = state.repair_task()

        def measure() -> tuple[float, float | None]:
            lo = logodds(state.model, state.tokenizer, state.repair_items)
            nll = assistant_token_metrics(state.model, state.tokenizer, task)["task_nll"] if task else None
            return lo, nll

        fo = first_order_attribution(state.model, state.base, state.tokenizer, state.repair_items, task)
        lo_ft, nll_ft = fo["logodds"], fo["task_nll"]
        rows = [{"layer": i, "predicted_drop": d, "predicted_rise": r if task else None,
                 "predicted_score": _score(d, r if task else None)}
                for i, (d, r) in enumerate(zip(fo["drop"], fo["rise"]))]
        predicted = sorted(rows, key=lambda r: r["predicted_score"], reverse=True)

        saved: dict[int, dict] = {}

        def swap_in(i: int) -> None:
            saved.setdefault(i, {k: v.detach().clone() for k, v in layers[i].state_dict().items()})
            _copy_layer(layers[i], base_layers[i])

        def swap_out(i: int) -> None:
            layers[i].load_state_dict(saved[i])

        for r in predicted[:p.verify]:                      # exact checks of the best candidates
            swap_in(r["layer"])
            lo, nll = measure()
            swap_out(r["layer"])
            r["logodds_drop"] = lo_ft - lo
            r["task_nll_rise"] = (nll - nll_ft) if nll is not None else None
            r["score"] = _score(r["logodds_drop"], r["task_nll_rise"])
            r["_measured"] = (lo, nll)
        verified = sorted(predicted[:p.verify], key=lambda r: r["score"], reverse=True)
        ranking = verified + predicted[p.verify:]
        if p.k != "auto":
            chosen = [r["layer"] for r in ranking[: p.k]]
        else:
            nll_base = state.base_task_nll()
            chosen, best = [], lo_ft
            for r in verified[: max(1, int(p.max_share * len(layers)))]:
                if r["logodds_drop"] <= 0:
                    break
                swap_in(r["layer"])
                # the first layer alone was measured already
                lo, nll = r["_measured"] if not chosen else measure()
                keep = lo < best and (nll is None or task_retention(nll, nll_base, nll_ft) >= p.retention)
                if keep:
                    chosen.append(r["layer"])
                    best = lo
                else:
                    swap_out(r["layer"])
        prefix = _layer_prefixes(state.model)
        for i in chosen:
            _copy_layer(layers[i], base_layers[i])
            for name, prm in layers[i].named_parameters():
                prm.requires_grad_(False)
                state.locked.add(prefix[i] + name)
        state.record(self.name, layers=sorted(chosen), attribution=rounded_rows(rows), verified=[r["layer"] for r in verified],
                     logodds_finetune=round(lo_ft, 4), task_chosen_on=state.repair_task_from())
        return state


def _layer_prefixes(model) -> list[str]:
    layers = list(decoder_layers(model))
    names = {id(m): n for n, m in model.named_modules()}
    return [names[id(layer)] + "." for layer in layers]
