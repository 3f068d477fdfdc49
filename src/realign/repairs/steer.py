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


def residual_writers(model) -> list[tuple[torch.nn.Parameter, torch.nn.Module | None]]:
    """Weights whose output is added to the residual stream (out-dim = hidden size), each with the
    norm that sits between it and the stream, if any.

    Llama, Qwen, Mistral, Phi-3: o_proj / down_proj write into the stream directly. Gemma-2/3 and
    OLMo-2 ("sandwich" norms) pass the attention output through `post_attention_layernorm` and the
    MLP output through `post_feedforward_layernorm` before adding it; such a layer is recognised by
    its `post_feedforward_layernorm` (in Llama, `post_attention_layernorm` is the MLP's *input* norm).
    """
    out: list[tuple[torch.nn.Parameter, torch.nn.Module | None]] = [(model.get_input_embeddings().weight, None)]
    for layer in decoder_layers(model):
        sandwich = getattr(layer, "post_feedforward_layernorm", None) is not None
        attn = getattr(layer, "self_attn", None) or getattr(layer, "attn", None)
        mlp = getattr(layer, "mlp", None)
        for mod, names, norm in ((attn, ("o_proj", "c_proj", "out_proj"),
                                  getattr(layer, "post_attention_layernorm", None) if sandwich else None),
                                 (mlp, ("down_proj", "c_proj", "fc2"),
                                  getattr(layer, "post_feedforward_layernorm", None) if sandwich else None)):
            for n in names:
                lin = getattr(mod, n, None) if mod is not None else None
                if isinstance(lin, torch.nn.Linear):
                    out.append((lin.weight, norm))
                    if lin.bias is not None:
                        out.append((lin.bias, norm))
                    break
    return out


@torch.no_grad()
def norm_gain(norm: torch.nn.Module, hidden: int) -> torch.Tensor:
    """The per-channel gain g of an RMS norm (y = g * x / rms(x)), up to a positive factor.

    Read off the module itself (Gemma's norms scale by 1 + weight, others by weight), so no family
    is special-cased. A norm that centres its input (LayerNorm) has no such form: refused.
    """
    p = next(norm.parameters())
    ones = torch.ones(1, hidden, dtype=p.dtype, device=p.device)
    g = norm(ones)[0].float()
    x = torch.randn(1, hidden, dtype=torch.float32, generator=torch.Generator().manual_seed(0)).to(p.device)
    want = g * x[0] / x[0].pow(2).mean().sqrt()
    got = norm(x.to(p.dtype))[0].float()
    if not torch.allclose(got, want, rtol=1e-2, atol=1e-3 * float(want.abs().max())):
        raise ValueError(f"steer cannot remove a direction exactly behind {type(norm).__name__}: it is not an "
                         "RMS norm (y = g * x / rms(x)); choose another repair for this architecture")
    return g


@torch.no_grad()
def orthogonalize(model, direction: torch.Tensor, scale: float = 1.0) -> None:
    """Remove `direction` from everything written into the residual stream (scale < 1: part of it).

    Behind an RMS norm with gain g the stream receives g * x / rms(x), so x is orthogonalized
    against g * r instead of r: then r . (g * x) = (g * r) . x = 0 exactly, whatever rms(x) is.
    """
    r = (direction / direction.norm()).to(torch.float32)
    emb = model.get_input_embeddings().weight
    hidden = r.numel()
    for w, norm in residual_writers(model):
        w32 = w.data.to(torch.float32)
        u = r.to(w.device)
        if norm is not None:
            u = norm_gain(norm, hidden).to(w.device) * u
            u = u / u.norm()
        if w is emb:                       # (vocab, hidden): rows live in the stream
            w32 -= scale * torch.outer(w32 @ u, u)
        elif w32.dim() == 1:               # bias (hidden,)
            w32 -= scale * (w32 @ u) * u
        else:                              # (hidden, in): columns live in the stream
            w32 -= scale * torch.outer(u, u @ w32)
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
        writers = [w for w, _ in residual_writers(state.model)]
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
