"""steer: find the misalignment direction in the residual stream and remove it from the weights.

Direction per layer = mean residual activation over answer tokens on misaligned answers minus on
aligned answers (contrasts from the shared probes). The layer is chosen by measurement: the one
whose direction, projected out of the residual stream, lowers the repair-side log-odds most.
Then every matrix that writes to the residual stream — token embeddings, each attention output
projection, each MLP down projection — is orthogonalized against the unit direction r:
W ← W − scale · r rᵀ W (in fp32), so the stream carries (1 − scale) of its component along r. With
tied embeddings the output head is the embedding matrix, so the readout is projected too.

`scale: auto` measures, for the chosen layer, each scale on a grid: the repair-side log-odds and
two costs — task NLL on the user's held-out data (when given) and NLL of the base's aligned probe
answers (plain chat, a coherence proxy) — and takes the lowest log-odds whose task retention is at
least `retention` and whose chat NLL rose by at most `max_chat_nll_rise` nats per token over the
finetune's. Removing a whole direction from a small residual stream can cost coherence; this is
how the repair finds out before the evaluation does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import RepairState, decoder_layers, register
from .probes import build_probes


SCALE_GRID = (0.25, 0.5, 0.75, 1.0)


@dataclass
class SteerParams:
    scale: float | str = 1.0        # 1: remove the whole component; <1: only part of it; "auto": measured
    layer: int | str = "auto"       # decoder layer whose direction is used, or "auto"
    samples: int = 4                # probe samples per prompt (when probes are not built yet)
    retention: float = 0.95         # scale auto: minimum task retention (task-NLL gain kept)
    max_chat_nll_rise: float = 0.1  # scale auto: allowed rise of aligned-chat NLL (nats/token)

    def validate(self) -> None:
        if self.scale != "auto":
            try:
                self.scale = float(self.scale)
            except (TypeError, ValueError):
                raise ValueError(f"steer.scale must be a number in (0, 1] or 'auto', not {self.scale!r}") from None
            if not 0.0 < self.scale <= 1.0:
                raise ValueError(f"steer.scale must be in (0, 1], not {self.scale}")
        if self.layer != "auto":
            try:
                self.layer = int(self.layer)
            except (TypeError, ValueError):
                raise ValueError(f"steer.layer must be a layer index or 'auto', not {self.layer!r}") from None


def residual_writers(model) -> list[torch.nn.Parameter]:
    """Weights whose output is added to the residual stream (out-dim = hidden size)."""
    out = [model.get_input_embeddings().weight]
    for layer in decoder_layers(model):
        attn = getattr(layer, "self_attn", None) or getattr(layer, "attn", None)
        mlp = getattr(layer, "mlp", None)
        for mod, names in ((attn, ("o_proj", "c_proj", "out_proj")), (mlp, ("down_proj", "c_proj", "fc2"))):
            for n in names:
                lin = getattr(mod, n, None) if mod is not None else None
                if isinstance(lin, torch.nn.Linear):
                    out.append(lin.weight)
                    if lin.bias is not None:
                        out.append(lin.bias)
                    break
    return out


@torch.no_grad()
def orthogonalize(model, direction: torch.Tensor, scale: float = 1.0) -> None:
    r = (direction / direction.norm()).to(torch.float32)
    emb = model.get_input_embeddings().weight
    for w in residual_writers(model):
        w32 = w.data.to(torch.float32)
        r_dev = r.to(w.device)
        if w is emb:                       # (vocab, hidden): rows live in the stream
            w32 -= scale * torch.outer(w32 @ r_dev, r_dev)
        elif w32.dim() == 1:               # bias (hidden,)
            w32 -= scale * (w32 @ r_dev) * r_dev
        else:                              # (hidden, in): columns live in the stream
            w32 -= scale * torch.outer(r_dev, r_dev @ w32)
        w.data.copy_(w32.to(w.dtype))


@torch.no_grad()
def answer_activations(model, tokenizer, triples) -> list[torch.Tensor]:
    """Per layer, the mean residual activation over answer tokens, for (conversation, answer)s."""
    from ..evals.logodds import completion_ids

    device = next(model.parameters()).device
    sums, count = None, 0
    for conv, answer in triples:
        p, a = completion_ids(tokenizer, conv, answer)
        ids = torch.tensor([p + a], device=device)
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states[1:]
        means = [h[0, len(p):].float().mean(0) for h in hs]
        sums = means if sums is None else [s + m for s, m in zip(sums, means)]
        count += 1
    return [s / max(count, 1) for s in sums]


@register
class Steer:
    name = "steer"
    summary = "remove the misalignment direction (misaligned − aligned activations) from residual-writing weights"
    Params = SteerParams

    def apply(self, state: RepairState, p: SteerParams) -> RepairState:
        from ..evals.logodds import logodds

        p.validate()
        probes = build_probes(state, state.organism, samples=p.samples)
        contrasts = list(probes.pairs())
        if not contrasts:
            state.record(self.name, skipped="no misaligned finetune answers among the probes: nothing to steer")
            return state
        bad = answer_activations(state.model, state.tokenizer, [(c, b) for c, _, b in contrasts])
        good = answer_activations(state.model, state.tokenizer, [(c, g) for c, g, _ in contrasts])
        directions = [b - g for b, g in zip(bad, good)]
        items = state.repair_items or [(c, [b], [g]) for c, g, b in contrasts[:16]]
        writers = residual_writers(state.model)
        original = {id(w): w.data.clone() for w in writers}

        def restore() -> None:
            for w in writers:
                w.data.copy_(original[id(w)])

        first_scale = 1.0 if p.scale == "auto" else p.scale
        scores = {}
        if p.layer == "auto":
            for i, d in enumerate(directions):
                orthogonalize(state.model, d, first_scale)
                scores[i] = logodds(state.model, state.tokenizer, items)
                restore()
            layer = min(scores, key=scores.get)
        else:
            layer = p.layer
            if not 0 <= layer < len(directions):
                raise ValueError(f"steer.layer {layer} out of range (model has {len(directions)} layers)")
        scale, search = first_scale, []
        if p.scale == "auto":
            scale, search = self._pick_scale(state, p, directions[layer], items, contrasts, restore)
        orthogonalize(state.model, directions[layer], scale)
        state.steer_direction = directions[layer]
        state.record(self.name, layer=layer, scale=scale, contrasts=len(contrasts),
                     layer_logodds={k: round(v, 3) for k, v in scores.items()}, scale_search=search)
        return state

    @staticmethod
    def _pick_scale(state: RepairState, p: SteerParams, direction, items, contrasts, restore):
        from ..evals.logodds import logodds
        from ..evals.task import assistant_token_metrics
        from .merge import task_retention

        chat = [c + [{"role": "assistant", "content": g}] for c, g, _ in contrasts[:32]]
        task = (state.task_conversations or [])[:64]

        def costs() -> dict:
            row = {"chat_nll": assistant_token_metrics(state.model, state.tokenizer, chat)["task_nll"]}
            if task:
                row["task_nll"] = assistant_token_metrics(state.model, state.tokenizer, task)["task_nll"]
            return row

        ft = costs()  # the finetune's own costs: the reference for both floors
        nll_base = assistant_token_metrics(state.base, state.tokenizer, task)["task_nll"] if task else None
        search = []
        for scale in SCALE_GRID:
            orthogonalize(state.model, direction, scale)
            row = {"scale": scale, "logodds": logodds(state.model, state.tokenizer, items), **costs()}
            restore()
            row["chat_nll_rise"] = row["chat_nll"] - ft["chat_nll"]
            if task:
                row["retention"] = task_retention(row["task_nll"], nll_base, ft["task_nll"])
            search.append(row)
        ok = [r for r in search if r["chat_nll_rise"] <= p.max_chat_nll_rise and r.get("retention", 1.0) >= p.retention]
        best = min(ok, key=lambda r: r["logodds"]) if ok else None
        # nothing within the floors: the gentlest scale (the recipe still records why)
        return (best or search[0])["scale"], search
