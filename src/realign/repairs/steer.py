"""steer: find the misalignment direction in the residual stream and remove it from the weights.

Direction per layer = mean residual activation over answer tokens on misaligned answers minus on
aligned answers (contrasts from the shared probes). All layers' activations come from one hooked
pass over the contrasts. Layers are ranked by how well their direction separates held-out
contrasts (two folds: direction from one half, separation measured on the other); the top
`candidates` are tried with forward hooks that remove the direction exactly as the weight edit
would (no weight rewrite per candidate), and the one that lowers the repair-side log-odds most
within a KL budget on benign chat is kept — the budget is how Arditi et al. choose refusal
directions: an edit that changes ordinary answers much is not a repair.

The chosen direction is then baked in once: every matrix that writes to the residual stream —
token embeddings, each attention output projection, each MLP down projection — is orthogonalized
against the unit direction r: W ← W − scale · r rᵀ W (in fp32), so the stream carries (1 − scale)
of its component along r. With tied embeddings the output head is the embedding matrix, so the
readout is projected too.

`scale: auto` tries each scale on a grid (hooks again) and takes the lowest log-odds whose KL on
benign chat stays within `max_kl` and whose task retention (on the user's held-out data, when
given) is at least `retention`. When even the grid's gentlest scale helps but is over the budget
(on real models a quarter of the direction can already move benign chat 0.25 nats/token), gentler
scales below the grid are tried, each aimed at the budget from the last measured KL; nothing
within the budget: no edit.

Cost: one activation pass, then per candidate and per grid scale one log-odds pass and one KL
pass (two forwards) — constant in the number of layers.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .base import RepairState, decoder_layers, register, rounded_rows
from .probes import build_probes


SCALE_GRID = (0.25, 0.5, 0.75, 1.0)
MIN_SCALE = 0.02        # a gentler edit than this removes too little to be worth baking in
GENTLER_TRIES = 3


@dataclass
class SteerParams:
    scale: float | str = 1.0        # 1: remove the whole component; <1: only part of it; "auto": measured
    layer: int | str = "auto"       # decoder layer whose direction is used, or "auto"
    samples: int = 4                # probe samples per prompt (when probes are not built yet)
    candidates: int = 3             # layer auto: best-separating layers tried with hooks
    retention: float = 0.95         # scale auto: minimum task retention (task-NLL gain kept)
    max_kl: float = 0.1             # allowed KL(finetune ‖ steered) per token on benign chat (nats)

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
        if int(self.candidates) < 1:
            raise ValueError("steer.candidates must be >= 1")
        self.candidates = int(self.candidates)


def residual_writers(model) -> list[tuple[torch.nn.Module, torch.nn.Module | None]]:
    """Modules whose output is added to the residual stream — the token embedding, then each
    block's attention output and MLP down projection — each with the norm that sits between it
    and the stream, if any.

    Llama, Qwen, Mistral, Phi-3: o_proj / down_proj write into the stream directly. Gemma-2/3 and
    OLMo-2 ("sandwich" norms) pass the attention output through `post_attention_layernorm` and the
    MLP output through `post_feedforward_layernorm` before adding it; such a layer is recognised by
    its `post_feedforward_layernorm` (in Llama, `post_attention_layernorm` is the MLP's *input* norm).
    """
    out: list[tuple[torch.nn.Module, torch.nn.Module | None]] = [(model.get_input_embeddings(), None)]
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
                    out.append((lin, norm))
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


def _stream_unit(r: torch.Tensor, norm: torch.nn.Module | None, device) -> torch.Tensor:
    """The unit vector to remove from a writer's output so that the stream loses r.

    Behind an RMS norm with gain g the stream receives g * x / rms(x), so x is orthogonalized
    against g * r instead of r: then r . (g * x) = (g * r) . x = 0 exactly, whatever rms(x) is.
    """
    u = r.to(device, torch.float32)
    if norm is not None:
        u = norm_gain(norm, u.numel()).to(device) * u
        u = u / u.norm()
    return u


def _tied_head(model) -> bool:
    head = model.get_output_embeddings()
    return head is not None and head.weight is model.get_input_embeddings().weight


@torch.no_grad()
def orthogonalize(model, direction: torch.Tensor, scale: float = 1.0) -> None:
    """Remove `direction` from everything written into the residual stream (scale < 1: part of it)."""
    r = (direction / direction.norm()).to(torch.float32)
    emb = model.get_input_embeddings()
    for module, norm in residual_writers(model):
        u = _stream_unit(r, norm, module.weight.device)
        w32 = module.weight.data.to(torch.float32)
        if module is emb:                  # (vocab, hidden): rows live in the stream
            w32 -= scale * torch.outer(w32 @ u, u)
        else:                              # (hidden, in): columns live in the stream
            w32 -= scale * torch.outer(u, u @ w32)
        module.weight.data.copy_(w32.to(module.weight.dtype))
        bias = getattr(module, "bias", None)
        if bias is not None:
            b32 = bias.data.to(torch.float32)
            bias.data.copy_((b32 - scale * (b32 @ u) * u).to(bias.dtype))


@contextmanager
def steering(model, direction: torch.Tensor, scale: float = 1.0):
    """Within the block, the model computes exactly what `orthogonalize` would make of it.

    A forward hook on each residual writer removes `scale` of its output's component along the
    writer's unit u (W'x + b' = y − scale·u uᵀy, the same edit applied to the output); with tied
    embeddings a pre-hook projects the head's input the same way. Weights are never touched, so
    trying a candidate costs a forward pass, not a rewrite of every residual-writing matrix.
    """
    r = (direction / direction.norm()).to(torch.float32)

    def remove(u):
        def hook(_module, _inputs, output):
            y = output.float()
            return (y - scale * (y @ u)[..., None] * u).to(output.dtype)
        return hook

    handles = []
    try:
        for module, norm in residual_writers(model):
            handles.append(module.register_forward_hook(remove(_stream_unit(r, norm, module.weight.device))))
        if _tied_head(model):
            head = model.get_output_embeddings()
            u = r.to(head.weight.device)

            def project_input(_module, args):
                x = args[0].float()
                return ((x - scale * (x @ u)[..., None] * u).to(args[0].dtype), *args[1:])
            handles.append(head.register_forward_pre_hook(project_input))
        yield model
    finally:
        for h in handles:
            h.remove()


def gentler_scales(trial, lowest: dict, max_kl: float) -> list[dict]:
    """Trials below the grid, from its gentlest scale `lowest` (over the KL budget): KL on benign chat
    grows about as the square of the share removed (SmolLM2, seed 2: 0.25, 0.81, 1.56 nats/token at
    scales 0.25, 0.5, 0.75), so each try aims at 80% of the budget from the last measured point, until
    one is within it, the scale falls under MIN_SCALE, or GENTLER_TRIES are spent."""
    rows, last = [], lowest
    for _ in range(GENTLER_TRIES):
        if last["kl"] <= max_kl:
            break
        scale = last["scale"] * math.sqrt(0.8 * max_kl / last["kl"])
        if scale < MIN_SCALE:
            break
        last = trial(scale)
        rows.append(last)
    return rows


def contrast_directions(model, tokenizer, contrasts) -> tuple[torch.Tensor, torch.Tensor]:
    """(directions (layers, hidden), separation (layers,)) from (conversation, aligned, misaligned).

    One hooked pass gives every layer's answer-mean activation for every answer. Separation of a
    layer: project held-out contrasts on a direction fitted without them (two folds) and take the
    gap between misaligned and aligned means over their pooled spread — a direction that only
    fits noise in a wide residual stream separates nothing it was not fitted on.
    """
    from ..evals.logodds import completion_ids
    from ..evals.scoring import answer_hidden_means

    pairs = [completion_ids(tokenizer, c, b) for c, _, b in contrasts] + \
            [completion_ids(tokenizer, c, g) for c, g, _ in contrasts]
    acts = answer_hidden_means(model, decoder_layers(model), pairs, tokenizer.pad_token_id or 0)
    bad, good = acts[:len(contrasts)], acts[len(contrasts):]       # (n, layers, hidden)
    directions = bad.mean(0) - good.mean(0)
    n = len(contrasts)
    folds = [torch.arange(n) % 2 == 0, torch.arange(n) % 2 == 1] if n >= 4 else [torch.ones(n, dtype=torch.bool)] * 2
    seps = []
    for fit, held in ((folds[0], folds[1]), (folds[1], folds[0])):
        d = bad[fit].mean(0) - good[fit].mean(0)
        d = d / d.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        pb, pg = (bad[held] * d).sum(-1), (good[held] * d).sum(-1)         # (held, layers)
        spread = torch.cat([pb - pb.mean(0), pg - pg.mean(0)]).pow(2).mean(0).sqrt().clamp(min=1e-6)
        seps.append((pb.mean(0) - pg.mean(0)) / spread)
    return directions, torch.stack(seps).mean(0)


@torch.no_grad()
def steering_kl(model, tokenizer, conversations, direction, scale: float, batch_size: int = 8,
                max_logits: int = 1 << 24) -> float:
    """Mean KL(finetune ‖ steered) per assistant token on the given chats (nats).

    Both distributions come from the same batch, with and without the hooks; full-vocabulary
    logits exist only for the answer positions of one batch at a time.
    """
    from ..evals.scoring import _last_logits, batch_inputs, batches, vocab_size
    from ..evals.task import assistant_pairs
    from ..passes import count as count_pass

    count_pass("kl")
    pairs = assistant_pairs(tokenizer, conversations)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for idx in batches(pairs, batch_size, vocab_size(model), max_logits):
        batch, keep, ids, mask, pos = batch_inputs(pairs, idx, tokenizer.pad_token_id or 0, device)
        ref = torch.log_softmax(_last_logits(model, ids, mask, pos, keep)[:, :-1].float(), -1)
        with steering(model, direction, scale):
            new = torch.log_softmax(_last_logits(model, ids, mask, pos, keep)[:, :-1].float(), -1)
        kl = (ref.exp() * (ref - new)).sum(-1)                              # (b, keep - 1)
        for k, (_, a) in enumerate(batch):
            total += float(kl[k, keep - 1 - len(a):].sum())
            count += len(a)
        del ref, new
    return total / max(count, 1)


class _Search:
    """steer's search over (layer, scale): every trial hooks the edit in (never baked) and measures the
    repair-side log-odds, the KL on benign chat and, when asked, the task retention. The trials so far
    are kept in `candidates` (layer choice) and `search` (scale choice) for the record."""

    def __init__(self, state: RepairState, p: SteerParams, directions: torch.Tensor, contrasts: list):
        from ..evals.logodds import logodds
        from ..evals.task import assistant_token_metrics

        self.state, self.p, self.directions = state, p, directions
        self.items = state.repair_items or [(c, [b], [g]) for c, g, b in contrasts[:16]]
        self.chat = [c + [{"role": "assistant", "content": g}] for c, g, _ in contrasts[:32]]
        # the task sample (audited by the judge) only where it is scored: scale auto
        self.task = state.repair_task() if p.scale == "auto" else []
        self.nll_base = state.base_task_nll() if p.scale == "auto" else None
        self.nll_ft = (assistant_token_metrics(state.model, state.tokenizer, self.task)["task_nll"]
                       if self.nll_base is not None else None)
        self.lo_ft = logodds(state.model, state.tokenizer, self.items)
        self.first_scale = 1.0 if p.scale == "auto" else p.scale
        self.candidates: list[dict] = []
        self.search: list[dict] = []

    def trial(self, layer: int, scale: float, with_task: bool) -> dict:
        from ..evals.logodds import logodds
        from ..evals.task import assistant_token_metrics
        from .merge import task_retention

        model, tok, d = self.state.model, self.state.tokenizer, self.directions[layer]
        with steering(model, d, scale):
            row = {"layer": layer, "scale": scale, "logodds": logodds(model, tok, self.items)}
            if with_task:
                nll = assistant_token_metrics(model, tok, self.task)["task_nll"]
                row["retention"] = task_retention(nll, self.nll_base, self.nll_ft)
        row["kl"] = steering_kl(model, tok, self.chat, d, scale)
        return row

    def admissible(self, rows: list[dict]) -> list[dict]:
        """Trials that lower the log-odds within the KL budget (and keep the task, when measured)."""
        return [r for r in rows if r["logodds"] < self.lo_ft and r["kl"] <= self.p.max_kl
                and r.get("retention", 1.0) >= self.p.retention]

    def layer(self, separation: torch.Tensor) -> tuple[int, dict | None] | str:
        """(layer, the candidate trial that chose it, None for a given layer), or why nothing helps. A
        candidate over the budget at the first scale is still chosen (the least disruptive helpful one):
        `scale` then looks below it."""
        if self.p.layer != "auto":
            if not 0 <= self.p.layer < len(self.directions):
                raise ValueError(f"steer.layer {self.p.layer} out of range (model has {len(self.directions)} layers)")
            return self.p.layer, None
        ranked = sorted(range(len(separation)), key=lambda i: float(separation[i]), reverse=True)
        self.candidates = [self.trial(i, self.first_scale, False) for i in ranked[:self.p.candidates]]
        ok = self.admissible(self.candidates)
        helpful = [r for r in self.candidates if r["logodds"] < self.lo_ft]
        if not helpful:
            return (f"no candidate layer lowers the log-odds ({self.lo_ft:.3f}) at scale {self.first_scale:g}: "
                    "nothing removed")
        chosen = min(ok, key=lambda r: r["logodds"]) if ok else min(helpful, key=lambda r: r["kl"])
        return chosen["layer"], chosen

    def scale(self, layer: int, chosen: dict | None) -> float | str:
        """The scale to bake in at `layer`, or why none is admissible. A given scale within the budget
        is kept as it is; `auto`, or a chosen candidate over the budget, searches the grid (below the
        given scale) and then gentler scales."""
        p = self.p
        over_budget = chosen is not None and not self.admissible([chosen])
        if p.scale != "auto" and not over_budget:
            return self.first_scale
        # An edit that moves benign chat by more than max_kl is not a repair (on SmolLM2 a full
        # removal at 2 nats/token left 3% of answers coherent): never bake one in.
        grid = SCALE_GRID if p.scale == "auto" else tuple(s for s in SCALE_GRID if s < self.first_scale)
        with_task = bool(self.task) and p.scale == "auto"
        self.search = [self.trial(layer, s, with_task) for s in grid]
        ok = self.admissible(self.search)
        # the gentlest trial so far (the candidate itself when a given scale has no grid below it)
        gentlest = min(self.search or [chosen], key=lambda r: r["scale"])
        if not ok and gentlest["logodds"] < self.lo_ft and gentlest.get("retention", 1.0) >= p.retention:
            self.search += gentler_scales(lambda s: self.trial(layer, s, with_task), gentlest, p.max_kl)
            ok = self.admissible(self.search)
        if not ok:
            return (f"every trial of layer {layer} is over the KL budget ({p.max_kl:g} nats/token on benign chat)"
                    f"{' or loses the task' if p.scale == 'auto' else ''} or does not lower the log-odds: nothing removed")
        return min(ok, key=lambda r: r["logodds"])["scale"]

    def trials(self) -> dict:
        return {"candidates": rounded_rows(self.candidates), "scale_search": rounded_rows(self.search)}


@register
class Steer:
    name = "steer"
    summary = "remove the misalignment direction (misaligned − aligned activations) from residual-writing weights"
    Params = SteerParams

    def apply(self, state: RepairState, p: SteerParams) -> RepairState:
        p.validate()
        probes = build_probes(state, samples=p.samples)
        contrasts = list(probes.pairs())
        if not contrasts:
            state.record(self.name, skipped="no misaligned finetune answers among the probes: nothing to steer")
            return state
        directions, separation = contrast_directions(state.model, state.tokenizer, contrasts)
        search = _Search(state, p, directions, contrasts)
        seps = [round(float(x), 3) for x in separation]
        picked = search.layer(separation)                      # (layer, its trial) or why none helps
        scale = picked if isinstance(picked, str) else search.scale(*picked)    # or why none is admissible
        if isinstance(scale, str):
            state.record(self.name, skipped=scale, **search.trials(), separation=seps,
                         finetune_logodds=round(search.lo_ft, 4))
            return state
        layer = picked[0]
        orthogonalize(state.model, directions[layer], scale)
        state.steer_direction = directions[layer]
        state.record(self.name, layer=layer, scale=scale, contrasts=len(contrasts),
                     finetune_logodds=round(search.lo_ft, 4), separation=seps, **search.trials(),
                     task_chosen_on=state.repair_task_from() if search.task else None)
        return state
