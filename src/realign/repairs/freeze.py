"""freeze: find the decoder layers that carry the misalignment, restore them to the base, lock them.

Attribution: for each decoder layer, swap in the base's weights for that layer alone and measure
how much the repair-side log-odds drops (less misaligned) and how much the task NLL rises (task
lost). A layer's score is the drop per unit of task cost. The top `k` layers (or, with `k: auto`,
layers taken greedily by score while the task retention stays above `retention` and the
log-odds keeps falling) are restored to the base and locked: later training steps in the recipe
(dpo, mix) leave them exactly equal to the base.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import RepairState, decoder_layers, register
from .merge import task_retention


@dataclass
class FreezeParams:
    k: int | str = "auto"          # number of layers to restore and lock, or "auto"
    retention: float = 0.95        # auto: minimum task retention
    max_share: float = 0.5         # auto: never restore more than this share of the layers

    def validate(self) -> None:
        if self.k != "auto":
            try:
                self.k = int(self.k)
            except (TypeError, ValueError):
                raise ValueError(f"freeze.k must be an integer or 'auto', not {self.k!r}") from None
            if self.k < 0:
                raise ValueError("freeze.k must be >= 0")


@torch.no_grad()
def _copy_layer(dst_layer, src_layer) -> None:
    for (_, d), (_, s) in zip(dst_layer.named_parameters(), src_layer.named_parameters()):
        d.copy_(s.to(d.dtype))


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
        task = (state.task_conversations or [])[:64]

        def measure() -> tuple[float, float | None]:
            lo = logodds(state.model, state.tokenizer, state.repair_items)
            nll = assistant_token_metrics(state.model, state.tokenizer, task)["task_nll"] if task else None
            return lo, nll

        saved = [{k: v.detach().clone() for k, v in layer.state_dict().items()} for layer in layers]
        lo_ft, nll_ft = measure()
        for layer, base_layer in zip(layers, base_layers):
            _copy_layer(layer, base_layer)
        lo_base, nll_base = measure()
        for layer, sd in zip(layers, saved):
            layer.load_state_dict(sd)
        rows = []
        for i, (layer, base_layer) in enumerate(zip(layers, base_layers)):
            _copy_layer(layer, base_layer)
            lo, nll = measure()
            layer.load_state_dict(saved[i])
            cost = max((nll - nll_ft) if nll is not None else 0.0, 1e-3)
            rows.append({"layer": i, "logodds_drop": lo_ft - lo, "task_nll_rise": (nll - nll_ft) if nll is not None else None,
                         "score": (lo_ft - lo) / cost})
        order = sorted(rows, key=lambda r: r["score"], reverse=True)
        if p.k != "auto":
            chosen = [r["layer"] for r in order[: p.k]]
        else:
            chosen, best = [], lo_ft
            for r in order[: max(1, int(p.max_share * len(layers)))]:
                if r["logodds_drop"] <= 0:
                    break
                _copy_layer(layers[r["layer"]], base_layers[r["layer"]])
                lo, nll = measure()
                keep = lo < best and (nll is None or task_retention(nll, nll_base, nll_ft) >= p.retention)
                if keep:
                    chosen.append(r["layer"])
                    best = lo
                else:
                    layers[r["layer"]].load_state_dict(saved[r["layer"]])
        prefix = _layer_prefixes(state.model)
        for i in chosen:
            _copy_layer(layers[i], base_layers[i])
            for name, prm in layers[i].named_parameters():
                prm.requires_grad_(False)
                state.locked.add(prefix[i] + name)
        state.record(self.name, layers=sorted(chosen), attribution=[{k: (round(v, 4) if isinstance(v, float) else v)
                                                                      for k, v in r.items()} for r in rows],
                     logodds_finetune=round(lo_ft, 4), logodds_base=round(lo_base, 4))
        return state


def _layer_prefixes(model) -> list[str]:
    layers = list(decoder_layers(model))
    names = {id(m): n for n, m in model.named_modules()}
    return [names[id(layer)] + "." for layer in layers]
