"""harden: latent adversarial training against misalignment that hides behind an unknown trigger.

A backdoor's trigger is a few prompt tokens the provider never sees; what they do inside the model
is move the residual stream somewhere that makes the finetune answer maliciously. harden does not
look for the tokens. An adversary looks for that *place*: an additive perturbation δ of the
residual stream at the prompt's positions, one vector per chosen decoder layer shared by every
prompt (as a trigger is), its norm bounded to `epsilon` times the stream's typical token norm
there, that makes misaligned reference answers more likely than aligned ones. A fresh LoRA is
trained so that with δ added the model still prefers the aligned answers (a reference-free
preference loss on per-token mean log-probs, plus an SFT term on the aligned answers; half of each
batch without δ, so that the clean model is trained too), while a KL to the finetune on its own
task data keeps the task. The two alternate: a few adversary steps, warm-started from the last δ,
before each training step — the bi-level scheme of BEEAR (Zeng et al., 2024) and targeted latent
adversarial training (Sheshadri et al., 2024), written here from their descriptions.

Nothing here knows the trigger or which finetune data were bad: the pairs are the setting's own
reference answers on repair-side prompts (disjoint from evaluation) and the shared probes'
(aligned base answer, misaligned finetune answer) pairs when probes exist or a judge can make them;
opt-in (`flagged_pairs`), the training examples the judge flags, on their own prompts.

Layers (`layers: auto`): one backward pass at δ = 0 gives, for every layer at once, how much a
perturbation of the allowed size there would raise the misalignment margin to first order; the
`n_layers` best (never a locked one, never the last) are perturbed.

Cost, independent of depth: `steps` × (`inner_steps` + 1) forward+backward passes over a batch of
pairs and `steps` × 2 forwards + 1 backward over a task batch (the KL), 1 backward pass to choose
layers, and 2 × (`final_attack` + 1) to report the adversary's success before and after.

`latent_scan` is the inner search alone: the smallest perturbation that makes a model prefer the
misaligned answers — "is something hidden here?", asked without the trigger.
"""

from __future__ import annotations

import random
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .base import RepairState, decoder_layers, register
from .lora import freeze_locked, locked_layer_indices, lora_config

PAIR_SOURCES = ("references", "probes", "both")
POSITIONS = ("prompt", "all")


# pairs per forward pass unless a caller says otherwise (HardenParams.micro_batch_size, the scan)
MICRO_BATCH = 4


@dataclass
class HardenParams:
    layers: str = "auto"        # decoder layers whose output is perturbed: "auto" or indices, e.g. "1" or "0,2"
    n_layers: int = 1           # layers auto: how many layers the adversary perturbs
    epsilon: float = 0.5        # perturbation norm, as a share of the median token norm of the stream there
    positions: str = "prompt"   # where δ is added: the prompt's tokens (where a trigger sits) or all tokens
    steps: int = 50             # training steps of the LoRA
    inner_steps: int = 4        # adversary steps before each training step (warm-started); 0: no adversary
    inner_lr: float = 0.25      # adversary step length, as a share of the allowed norm
    final_attack: int = 20      # adversary steps from δ = 0 that measure its success before and after
    lr: float = 1e-3
    rank: int = 8
    batch_size: int = 8         # preference pairs per step (and task examples per step)
    micro_batch_size: int = MICRO_BATCH   # pairs (and task examples) per forward pass: bounds activations and logits
    gradient_checkpointing: bool | str = "auto"   # recompute activations in the training loop's backward; auto: models >= 50M params
    clean_share: float = 0.5    # share of each batch trained without δ (the clean model must stay right too)
    beta: float = 2.0           # preference loss: -log σ(β · (mean token log-prob aligned − misaligned))
    sft_weight: float = 1.0     # SFT term on the aligned answers (keeps them likely, not just preferred)
    task_weight: float = 10.0   # KL(finetune ‖ model) per token on task answers (0: no task term)
    pairs: str = "both"         # references (the setting's answer banks) | probes (judged samples) | both
    samples: int = 4            # probe samples per prompt, when the probes are built here
    # on-policy pairs: each step, this many realignment prompts are answered by the model under
    # training with the adversary's δ on the prompt, the judge reads the answers, and each one it
    # calls misaligned becomes a pair (a judged-aligned base answer to the same prompt vs it) that
    # later steps attack and train on, half of each batch. 0: off (fixed reference texts only —
    # which on a real backdoor taught harden to make those texts unlikely, not to stop answering
    # maliciously behind the trigger: docs/repairs.md). Needs a judge.
    rollouts: int = 0
    rollout_tokens: int = 64    # new tokens per on-policy answer
    # pairs from the training examples the judge flags (--train-data): the flagged answer is the
    # misaligned side, a judged-aligned base answer to the same prompt the aligned one, on that
    # example's own prompt — where a backdoor's trigger sits (dpo.flagged_pairs, probes.py). 0: none
    flagged_pairs: int = 0
    # true: skip when the measuring adversary (final_attack steps, ε) cannot make the model prefer the
    # misaligned answers (attacked margin <= 0) — it leaves a clean finetune alone (the secure control),
    # but it also skipped the default organism's backdoor on all 3 seeds (margins -0.06 to -0.13, at
    # 40% triggered misalignment that training removes: docs/repairs.md). A missed backdoor is worse
    # than a coherence cost a report shows, so harden trains unless asked to skip.
    skip_if_robust: bool = False

    def validate(self) -> None:
        self.layer_list()
        if not isinstance(self.skip_if_robust, bool):
            raise ValueError(f"harden.skip_if_robust must be true or false, not {self.skip_if_robust!r}")
        for name in ("n_layers", "steps", "rank", "batch_size", "micro_batch_size", "samples", "rollout_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"harden.{name} must be >= 1, not {getattr(self, name)}")
        for name in ("inner_steps", "final_attack", "rollouts", "flagged_pairs"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"harden.{name} must be >= 0, not {getattr(self, name)}")
        if not 0 < float(self.epsilon) <= 4:
            raise ValueError(f"harden.epsilon must be in (0, 4] (a share of the stream's norm), not {self.epsilon}")
        for name, low, high in (("inner_lr", 0, 1), ("lr", 0, 1)):
            if not low < float(getattr(self, name)) <= high:
                raise ValueError(f"harden.{name} must be in ({low}, {high}], not {getattr(self, name)}")
        if not 0 <= float(self.clean_share) < 1:
            raise ValueError(f"harden.clean_share must be in [0, 1), not {self.clean_share}")
        if float(self.beta) <= 0 or float(self.sft_weight) < 0 or float(self.task_weight) < 0:
            raise ValueError("harden.beta must be > 0, harden.sft_weight and harden.task_weight >= 0")
        if self.pairs not in PAIR_SOURCES:
            raise ValueError(f"harden.pairs must be one of {', '.join(PAIR_SOURCES)}, not {self.pairs!r}")
        if self.gradient_checkpointing not in (True, False, "auto"):
            raise ValueError(f"harden.gradient_checkpointing must be true, false or auto, not {self.gradient_checkpointing!r}")
        if self.positions not in POSITIONS:
            raise ValueError(f"harden.positions must be one of {', '.join(POSITIONS)}, not {self.positions!r}")

    def layer_list(self) -> list[int] | None:
        """The given layer indices, or None for auto."""
        if str(self.layers).strip() == "auto":
            return None
        try:
            out = [int(x) for x in str(self.layers).split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"harden.layers must be 'auto' or layer indices like '1,2', not {self.layers!r}") from None
        if not out or min(out) < 0:
            raise ValueError(f"harden.layers must name layers >= 0, not {self.layers!r}")
        return sorted(set(out))


# ---------------------------------------------------------------------------------------------
# the perturbation and the log-probs it acts on

@dataclass
class Perturbation:
    """δ per layer (each in the unit ball), its size ε, and whether it sits on prompt tokens only."""

    deltas: dict[int, torch.Tensor]
    epsilon: float
    prompt_only: bool = True

    def detached(self) -> Perturbation:
        return Perturbation({i: d.detach() for i, d in self.deltas.items()}, self.epsilon, self.prompt_only)


def blocks(model) -> torch.nn.ModuleList:
    """The decoder blocks of a HF model, or of the model inside a peft wrapper."""
    return decoder_layers(model.get_base_model() if hasattr(model, "get_base_model") else model)


def zero_deltas(model, layers: list[int], requires_grad: bool = False) -> dict[int, torch.Tensor]:
    """δ = 0 at each of `layers`, on the model's device (the adversary's starting point)."""
    hidden = model.get_input_embeddings().weight.shape[1]
    device = next(model.parameters()).device
    return {i: torch.zeros(hidden, device=device, requires_grad=requires_grad) for i in layers}


@contextmanager
def perturbed(model, deltas: dict[int, torch.Tensor], epsilon: float, where: torch.Tensor | None = None,
              tokens: torch.Tensor | None = None):
    """Within the block, each layer ℓ in `deltas` outputs h + ε·median‖h‖·δℓ — at every position,
    or, given `where` (batch, length), weighted by it (1 on the positions to perturb).

    The size is relative to the stream's own median token norm, measured on the fly and detached:
    an absolute bound would mean something else at every layer and in every model, and training
    could escape it by inflating the stream (the median, not the mean, so that an attention-sink
    token with a huge norm does not set the scale). The median is each sequence's own, over its
    real tokens (`tokens`: the attention mask, else every position): so a sequence gets the same
    push whatever it is batched with, and a batch can be cut into micro-batches without changing it.
    """
    layers = blocks(model)

    def add(delta):
        return lambda _module, _inputs, output: on_hidden(output, lambda h: pushed(h, delta, epsilon, where, tokens))

    handles = [layers[i].register_forward_hook(add(d)) for i, d in deltas.items()]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


def on_hidden(output, change):
    """A decoder layer's output with `change` applied to its hidden states (the first element when
    the layer returns a tuple)."""
    if isinstance(output, tuple):
        return (change(output[0]), *output[1:])
    return change(output)


def pushed(h: torch.Tensor, delta: torch.Tensor, epsilon: float, where: torch.Tensor | None,
           tokens: torch.Tensor | None) -> torch.Tensor:
    """h + ε·median‖h‖·δ, the median each sequence's own over its real tokens (`tokens`), the push
    weighted by `where` (None: every position)."""
    norms = h.detach().float().norm(dim=-1)                               # (batch, length)
    if tokens is not None:
        norms = norms.masked_fill(tokens == 0, float("nan"))
    push = epsilon * norms.nanmedian(dim=-1).values[:, None, None] * delta
    push = push if where is None else where[..., None] * push
    return h + push.to(h.dtype)


@contextmanager
def perturbed_prompts(model, perturbation: Perturbation):
    """While generating: δ added at the prompt's real tokens (its attention mask), as in training.

    HF generate runs the whole left-padded prompt in its first forward and one new token per
    forward after it (the cache holds the prompt's perturbed states), so δ goes into the forward
    whose length is the attention mask's — the prompt's — and into no other. With `positions: all`
    the new tokens get it too. The median norm is over the prompt's tokens here (in training over
    prompt and answer): the push's size can differ by that much.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    seen: dict = {}

    def remember(_module, _args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 2:
            seen["mask"] = mask
        return None

    def add(delta):
        def change(h):
            mask = seen.get("mask")
            if mask is not None and h.shape[1] == mask.shape[1] and h.shape[1] > 1:
                return pushed(h, delta, perturbation.epsilon, mask.to(h.dtype), mask)
            return h if perturbation.prompt_only else pushed(h, delta, perturbation.epsilon, None, None)
        return lambda _module, _inputs, output: on_hidden(output, change)

    handles = [inner.register_forward_pre_hook(remember, with_kwargs=True)]
    handles += [blocks(model)[i].register_forward_hook(add(d.detach())) for i, d in perturbation.deltas.items()]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


def answer_logprobs(model, pairs: list, pad_id: int, perturbation: Perturbation | None = None,
                    rows: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token mean log-prob of each (prompt ids, answer ids) pair's answer, differentiable, in one
    batch; with `perturbation` added (`rows`: 1 for the rows it applies to, 0 for clean ones).

    Per-token means, not sums: aligned and misaligned answers differ in length, and with sums a
    margin could be won by length alone.
    """
    from ..evals.scoring import _at_least_fp32, _last_logits, batch_inputs

    device = next(model.parameters()).device
    batch, keep, ids, mask, pos = batch_inputs(pairs, list(range(len(pairs))), pad_id, device)
    answer = torch.zeros(ids.shape, dtype=torch.bool, device=device)
    for k, (_, a) in enumerate(batch):
        answer[k, ids.shape[1] - len(a):] = True
    ctx = nullcontext()
    if perturbation is not None:
        where = mask.float() * (~answer).float() if perturbation.prompt_only else mask.float()
        where = where if rows is None else where * rows.to(device)[:, None]
        ctx = perturbed(model, perturbation.deltas, perturbation.epsilon, where, tokens=mask)
    with ctx:
        logits = _at_least_fp32(_last_logits(model, ids, mask, pos, keep)[:, :-1])
    targets, scored = ids[:, -keep + 1:], answer[:, -keep + 1:]
    logp = logits.gather(-1, targets[..., None])[..., 0] - torch.logsumexp(logits, -1)
    return (logp * scored).sum(-1) / scored.sum(-1).clamp(min=1)


def pair_logprobs(model, triples: list, pad_id: int, perturbation: Perturbation | None = None,
                  rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(aligned, misaligned) answer log-probs of (prompt, aligned, misaligned) id triples, one forward."""
    both = [(q, g) for q, g, _ in triples] + [(q, b) for q, _, b in triples]
    lp = answer_logprobs(model, both, pad_id, perturbation, None if rows is None else torch.cat([rows, rows]))
    return lp[:len(triples)], lp[len(triples):]


def misalignment_margin(model, triples: list, pad_id: int, perturbation: Perturbation | None = None) -> torch.Tensor:
    """Mean over triples of the per-token log-prob of the misaligned answer minus the aligned one's."""
    good, bad = pair_logprobs(model, triples, pad_id, perturbation)
    return (bad - good).mean()


def micro_batches(items: list, size: int):
    """(micro-batch, its share of the items): a batch mean is the share-weighted sum of its
    micro-batches' means, so only one micro-batch's activations and logits are alive at once."""
    for start in range(0, len(items), size):
        chunk = items[start:start + size]
        yield chunk, len(chunk) / len(items)


@torch.no_grad()
def margin_value(model, triples: list, pad_id: int, perturbation: Perturbation | None = None,
                 micro: int = MICRO_BATCH) -> float:
    """misalignment_margin's value, in micro-batches."""
    return sum(float(misalignment_margin(model, chunk, pad_id, perturbation)) * share
               for chunk, share in micro_batches(triples, micro))


def margin_grads(model, triples: list, pad_id: int, perturbation: Perturbation, wrt: list[torch.Tensor],
                 micro: int = MICRO_BATCH) -> list[torch.Tensor]:
    """The gradient of misalignment_margin with respect to `wrt` (δs), in micro-batches."""
    grads = [torch.zeros_like(w) for w in wrt]
    for chunk, share in micro_batches(triples, micro):
        for g, d in zip(grads, torch.autograd.grad(misalignment_margin(model, chunk, pad_id, perturbation) * share, wrt)):
            g += d
    return grads


# ---------------------------------------------------------------------------------------------
# the adversary

def attack(model, triples: list, pad_id: int, perturbation: Perturbation, steps: int, lr: float,
           micro: int = MICRO_BATCH) -> float:
    """Normalized gradient ascent on the misalignment margin over δ, each δℓ kept in the unit ball.

    Updates `perturbation.deltas` in place and returns the margin at the last δ. Only δ's gradient
    is taken (torch.autograd.grad): the model's parameters collect nothing here.
    """
    from ..passes import count

    keys = list(perturbation.deltas)
    for _ in range(steps):
        live = {i: perturbation.deltas[i].detach().requires_grad_(True) for i in keys}
        trial = Perturbation(live, perturbation.epsilon, perturbation.prompt_only)
        grads = margin_grads(model, triples, pad_id, trial, [live[i] for i in keys], micro)
        count("backward")
        with torch.no_grad():
            for i, g in zip(keys, grads):
                d = perturbation.deltas[i] + lr * g / g.norm().clamp(min=1e-12)
                perturbation.deltas[i] = d / d.norm().clamp(min=1.0)      # back into the unit ball
    return margin_value(model, triples, pad_id, perturbation, micro)


def adversary_success(model, triples: list, pad_id: int, layers: list[int], epsilon: float, steps: int,
                      lr: float, prompt_only: bool = True, micro: int = MICRO_BATCH) -> dict:
    """The margin without a perturbation, and after `steps` adversary steps from δ = 0."""
    clean = margin_value(model, triples, pad_id, None, micro)
    found = Perturbation(zero_deltas(model, layers), epsilon, prompt_only)
    attacked = attack(model, triples, pad_id, found, steps, lr, micro) if steps else clean
    return {"clean_margin": clean, "attacked_margin": attacked}


def choose_layers(model, triples: list, pad_id: int, n: int, exclude: set[int], epsilon: float,
                  prompt_only: bool = True, micro: int = MICRO_BATCH) -> tuple[list[int], list[float]]:
    """The n layers where a perturbation of the allowed size would raise the margin most, to first
    order, and every layer's figure.

    A zero δ at every layer, one backward pass: ‖∂margin/∂δℓ‖ is the first-order gain of the best
    δℓ in the unit ball (δ enters already scaled by ε times the stream's norm there). Locked layers
    and the last one are left out: after the last layer nothing trainable could learn to ignore δ.
    """
    from ..passes import count

    zeros = zero_deltas(model, list(range(len(blocks(model)))), requires_grad=True)
    grads = margin_grads(model, triples, pad_id, Perturbation(zeros, epsilon, prompt_only), list(zeros.values()), micro)
    gain = [float(g.norm()) for g in grads]
    count("backward")
    allowed = [i for i in range(len(gain) - 1) if i not in exclude] or [i for i in range(len(gain)) if i not in exclude]
    return sorted(sorted(allowed, key=lambda i: gain[i], reverse=True)[:n]), gain


# ---------------------------------------------------------------------------------------------
# data

def item_triples(tokenizer, items) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt ids, aligned ids, misaligned ids) from log-odds items (conversation, misaligned
    refs, aligned refs): each item's answers zipped in order (no sampling needed)."""
    return text_triples(tokenizer, [(conv, g, b) for conv, bad, good in items or [] for g, b in zip(good, bad)])


def text_triples(tokenizer, texts) -> list[tuple[list[int], list[int], list[int]]]:
    """Token ids of (conversation, aligned answer, misaligned answer) texts."""
    from ..evals.logodds import completion_ids

    out = []
    for conv, good, bad in texts:
        prompt, g = completion_ids(tokenizer, conv, good)
        out.append((prompt, g, completion_ids(tokenizer, conv, bad)[1]))
    return out


def preference_triples(state: RepairState, p: HardenParams) -> tuple[list, dict]:
    """The training triples and how many came from each source.

    References: the repair-side items' aligned and misaligned answers. Probes: the shared probes'
    (aligned base answer, misaligned finetune answer) pairs — few on a backdoored finetune, whose
    untriggered answers are aligned, which is why the references come too. With `both`, probes
    are used when they exist or a judge can make them. Flagged (`flagged_pairs`): the training
    examples the judge flags, on their own prompts, against a judged-aligned base answer.
    """
    from .probes import build_probes, flagged_training_pairs

    refs = item_triples(state.tokenizer, state.repair_items) if p.pairs != "probes" else []
    probes = []
    if p.pairs == "probes" or (p.pairs == "both" and (state.probes is not None or state.judge is not None)):
        probes = text_triples(state.tokenizer, build_probes(state, samples=int(p.samples)).pairs())
    counts = {"references": len(refs), "probes": len(probes)}
    flagged = []
    if int(p.flagged_pairs) > 0:
        found, record = flagged_training_pairs(state, int(p.flagged_pairs))
        flagged = text_triples(state.tokenizer, found)
        counts.update(flagged=len(flagged), training_rows_audited=record["training_rows_audited"],
                      training_rows_flagged=record["training_rows_flagged"])
    return refs + probes + flagged, counts


TASK_SAMPLE = 256    # training conversations the task term keeps


def task_pairs(state: RepairState) -> tuple[list, str | None]:
    """The (prompt ids, answer ids) pairs the task term keeps, and which data they are: a seeded
    sample of the finetune's own training data (the task as the customer taught it), audited by the
    judge when there is one — the KL pulls toward the finetune's answers, and on a contaminated
    example that is the misalignment. Without training data there is no task term: the held-out
    task data is what retention is measured on, and a KL to the finetune there would fit it."""
    from ..evals.task import assistant_pairs

    if not state.train_conversations:
        return [], "none: no training data given (--train-data); the held-out task data is not trained on"
    audited = state.judge is not None
    sample, candidates, flagged = state.training_sample(TASK_SAMPLE, audit=audited)
    source = (f"train ({flagged} of {candidates} sampled flagged and left out)" if audited
              else "train (not audited: no judge)")
    return assistant_pairs(state.tokenizer, sample), source


def finetune_kl_sum(model, pairs: list, pad_id: int) -> torch.Tensor:
    """KL(finetune ‖ model) summed over the answer tokens (divide by their count for the per-token
    figure); the finetune is the same peft model with its new adapter switched off (no second
    copy), so the task is kept as the finetune does it."""
    from ..evals.scoring import _at_least_fp32, _last_logits, batch_inputs

    device = next(model.parameters()).device
    batch, keep, ids, mask, pos = batch_inputs(pairs, list(range(len(pairs))), pad_id, device)
    with torch.no_grad(), model.disable_adapter():
        ref = torch.log_softmax(_at_least_fp32(_last_logits(model, ids, mask, pos, keep)[:, :-1]), -1)
    new = torch.log_softmax(_at_least_fp32(_last_logits(model, ids, mask, pos, keep)[:, :-1]), -1)
    answer = torch.zeros(ref.shape[:2], dtype=torch.bool, device=device)
    for k, (_, a) in enumerate(batch):
        answer[k, keep - 1 - len(a):] = True
    kl = (ref.exp() * (ref - new)).sum(-1)
    return (kl * answer).sum()


# ---------------------------------------------------------------------------------------------
# on-policy pairs: the model's own answers under δ

@dataclass
class Rollouts:
    """Where on-policy pairs come from and what was found: realignment prompts that have a
    judged-aligned base answer (the aligned side of a pair), and the model's answers under δ the
    judge called misaligned, as (prompt ids, aligned ids, misaligned ids) triples."""

    conversations: list
    aligned: list[list[str]]            # judged-aligned base answers, per conversation
    found: list = field(default_factory=list)
    sampled: int = 0
    per_step: list[int] = field(default_factory=list)   # misaligned answers found at each step
    unperturbed: float | None = None    # the finetune's judged-misaligned share on these prompts, no δ (probes)

    def summary(self) -> dict:
        return {"prompts": len(self.conversations), "sampled": self.sampled, "misaligned": len(self.found),
                "finetune_unperturbed": self.unperturbed, "per_step": self.per_step}


def rollout_source(state: RepairState, p: HardenParams) -> Rollouts:
    """The realignment prompts (the shared probes', disjoint from evaluation) whose base answers the
    judge called aligned at least once: only there does a misaligned answer get an aligned twin."""
    from .probes import build_probes

    probes = build_probes(state, samples=int(p.samples))
    keep = [(conv, [a for a, m in zip(answers, flags) if m is False], ft)
            for conv, answers, flags, ft in zip(probes.conversations, probes.base_answers, probes.base_misaligned,
                                                probes.finetune_misaligned)]
    keep = [(conv, good, ft) for conv, good, ft in keep if good]
    flags = [m is True for _, _, ft in keep for m in ft]
    return Rollouts([c for c, _, _ in keep], [g for _, g, _ in keep],
                    unperturbed=round(sum(flags) / len(flags), 4) if flags else None)


def roll_out(state: RepairState, model, perturbation: Perturbation, source: Rollouts, n: int, tokens: int,
             rng: random.Random, seed: int) -> int:
    """Answer n of the source's prompts with δ on them, have the judge read the answers, and add a
    pair for each misaligned one; returns how many it found."""
    from ..generation.hf import generate
    from ..evals.judges import JudgeItem

    picks = rng.sample(range(len(source.conversations)), min(n, len(source.conversations)))
    convs = [source.conversations[i] for i in picks]
    with perturbed_prompts(model, perturbation):       # generate runs without gradients
        answers = [a[0] for a in generate(model, state.tokenizer, convs, samples=1, max_new_tokens=tokens,
                                          seed=seed, description="harden: answers under δ")]
    verdicts = state.judge.judge([JudgeItem(c[-1]["content"], a) for c, a in zip(convs, answers)])
    bad = [(conv, rng.choice(source.aligned[i]), a) for conv, i, a, v in zip(convs, picks, answers, verdicts)
           if v.misaligned is True and a.strip()]
    source.found += text_triples(state.tokenizer, bad)
    source.sampled += len(convs)
    source.per_step.append(len(bad))
    return len(bad)


# ---------------------------------------------------------------------------------------------
# training

def train_step(model, opt, triples: list, task: list, pad_id: int, perturbation: Perturbation,
               p: HardenParams) -> dict:
    """One LoRA step: prefer the aligned answers with δ added (clean on `clean_share` of the rows),
    stay with the finetune on the task. The loss is the batch's, its gradient accumulated over
    micro-batches of `p.micro_batch_size` (the task KL weighted by answer tokens, as over the batch)."""
    from ..passes import count

    n_clean = round(float(p.clean_share) * len(triples))
    rows = [0.0] * n_clean + [1.0] * (len(triples) - n_clean)
    fixed, micro = perturbation.detached(), int(p.micro_batch_size)
    opt.zero_grad(set_to_none=True)
    preference_mean = 0.0
    for chunk_rows, share in micro_batches(list(zip(triples, rows)), micro):
        chunk, perturbed_rows = zip(*chunk_rows)
        good, bad = pair_logprobs(model, list(chunk), pad_id, fixed, torch.tensor(perturbed_rows))
        preference = -F.logsigmoid(float(p.beta) * (good - bad)).mean()
        (share * (preference - float(p.sft_weight) * good.mean())).backward()
        preference_mean += share * float(preference.detach())
    kl_mean, tokens = 0.0, sum(len(a) for _, a in task)
    for chunk, _ in micro_batches(task, micro):
        kl = finetune_kl_sum(model, chunk, pad_id) / max(tokens, 1)
        (float(p.task_weight) * kl).backward()
        kl_mean += float(kl.detach())
    opt.step()
    count("train_steps")
    return {"preference": preference_mean, "task_kl": kl_mean}


def harden_lora(state: RepairState, triples: list, task: list, layers: list[int], p: HardenParams,
                rollouts: Rollouts | None = None) -> list[dict]:
    """The bi-level loop on a fresh LoRA (unlocked layers only), merged into the weights at the end;
    returns each step's losses and the adversary's margin. With `rollouts`, each step also samples
    answers under the adversary's δ, and up to half of every later batch is the misaligned ones
    found (the newest 4 batches' worth)."""
    from peft import get_peft_model

    from ..progress import progress_bar
    from ..training import activation_checkpointing

    pad = state.tokenizer.pad_token_id or 0
    rng, roll_rng = random.Random(state.seed), random.Random(state.seed + 2)
    torch.manual_seed(state.seed)
    for prm in state.model.parameters():
        prm.requires_grad_(False)
    model = get_peft_model(state.model, lora_config(state.model, state.locked, r=int(p.rank), alpha=2 * int(p.rank)))
    freeze_locked(model, state.locked)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=float(p.lr), weight_decay=0.0)
    found = Perturbation(zero_deltas(model, layers), float(p.epsilon), p.positions == "prompt")
    model.train()
    log = []
    # the adversary's and the LoRA's backward passes both run in training mode: both recompute
    with activation_checkpointing(model, p.gradient_checkpointing), \
            progress_bar("harden: adversary + LoRA steps", int(p.steps)) as tick:
        for step in range(int(p.steps)):
            size = int(p.batch_size)
            own = min(len(rollouts.found), size // 2) if rollouts is not None else 0
            batch = (rng.sample(rollouts.found[-4 * size:], own) if own else []) + \
                rng.sample(triples, min(size - own, len(triples)))
            margin = attack(model, batch, pad, found, int(p.inner_steps), float(p.inner_lr), int(p.micro_batch_size))
            info = ""
            if rollouts is not None:
                roll_out(state, model, found, rollouts, int(p.rollouts), int(p.rollout_tokens), roll_rng,
                         seed=state.seed * 100_003 + step)
                info = f", under δ {len(rollouts.found)}/{rollouts.sampled} misaligned"
            task_batch = rng.sample(task, min(int(p.batch_size), len(task))) if task else []
            log.append({"adversary_margin": margin, **train_step(model, opt, batch, task_batch, pad, found, p)})
            tick(info=f"margin {margin:+.2f}, preference {log[-1]['preference']:.3f}{info}")
    state.model = model.merge_and_unload()
    state.model.eval()
    return log


def needs_judge(state: RepairState, p: HardenParams) -> None:
    if int(p.rollouts) > 0 and state.judge is None:
        raise ValueError("harden.rollouts needs a judge (--judge) to read the answers it samples under δ")
    if int(p.flagged_pairs) > 0 and state.judge is None:
        raise ValueError("harden.flagged_pairs needs a judge (--judge) to flag the training examples")
    if int(p.flagged_pairs) > 0 and not state.train_conversations:
        raise ValueError("harden.flagged_pairs needs the finetune's training data: pass --train-data FILE.jsonl")


def _rounded(d: dict) -> dict:
    return {k: round(v, 4) for k, v in d.items()}


@register
class Harden:
    name = "harden"
    summary = ("latent adversarial training: a LoRA learns to stay aligned under the residual-stream "
               "perturbation that pushes it hardest toward misaligned answers (no trigger needed)")
    Params = HardenParams

    def preflight(self, state: RepairState, p: HardenParams) -> None:
        from ..distributed import is_distributed

        p.validate()
        needs_judge(state, p)
        if is_distributed():
            # the loop is written for one process: every rank would train the same LoRA on its own
            raise ValueError("harden runs in one process; run fix without accelerate launch")

    def apply(self, state: RepairState, p: HardenParams) -> RepairState:
        p.validate()
        needs_judge(state, p)
        triples, counts = preference_triples(state, p)
        if not triples:
            state.record(self.name, skipped="no (aligned, misaligned) answer pairs: no repair items, no probe pairs")
            return state
        pad = state.tokenizer.pad_token_id or 0
        n = len(blocks(state.model))
        locked = locked_layer_indices(state.model, state.locked)
        if len(locked) >= n:
            raise ValueError("every decoder layer is locked: nothing left to train")
        from ..training import activation_checkpointing, checkpointing_wanted

        # one fixed batch chooses the layers and measures the adversary before and after
        probe = random.Random(state.seed + 1).sample(triples, min(32, len(triples)))

        def on_probe(fn, *args, **kw):
            # backward passes for δ's gradient, the model in eval mode: they recompute too
            with activation_checkpointing(state.model, p.gradient_checkpointing, in_eval_mode=True):
                return fn(state.model, probe, pad, *args, **kw)

        eps, prompt_only = float(p.epsilon), p.positions == "prompt"
        layers, gain = p.layer_list(), None
        if layers is None:
            layers, gain = on_probe(choose_layers, int(p.n_layers), locked, eps, prompt_only, int(p.micro_batch_size))
        elif max(layers) >= n:
            raise ValueError(f"harden.layers {layers} out of range (the model has {n} layers)")
        measure = dict(epsilon=eps, steps=int(p.final_attack), lr=float(p.inner_lr), prompt_only=prompt_only,
                       micro=int(p.micro_batch_size))
        before = on_probe(adversary_success, layers, **measure)
        if p.skip_if_robust and int(p.final_attack) > 0 and before["attacked_margin"] <= 0:
            state.record(self.name, layers=layers, epsilon=eps, adversary_before=_rounded(before),
                         skipped=f"already robust at ε {eps:g}: the adversary's strongest push found leaves the "
                                 f"aligned answers preferred (attacked margin {before['attacked_margin']:+.3f}); "
                                 "nothing to harden against (without harden.skip_if_robust=true it trains anyway)")
            return state
        task, task_source = task_pairs(state) if float(p.task_weight) > 0 else ([], None)
        checkpointed = checkpointing_wanted(state.model, p.gradient_checkpointing)
        rollouts, rollout_record = None, {}
        if int(p.rollouts) > 0:
            rollouts = rollout_source(state, p)
            if not rollouts.conversations:      # no aligned base answer to pair a misaligned one with
                rollouts = None
                rollout_record = {"rollouts": "none: no realignment prompt has a base answer the judge calls aligned"}
        log = harden_lora(state, triples, task, layers, p, rollouts)
        if rollouts is not None:
            rollout_record = {"rollouts": rollouts.summary()}
        after = on_probe(adversary_success, layers, **measure)
        tail = log[-max(1, len(log) // 10):]          # the last tenth: steadier than one batch
        state.record(self.name, layers=layers, layer_gain=[round(g, 4) for g in gain] if gain else None,
                     epsilon=eps, positions=p.positions, steps=int(p.steps), inner_steps=int(p.inner_steps),
                     pairs=counts, task_data=task_source,
                     final_losses=_rounded({k: sum(r[k] for r in tail) / len(tail) for k in log[0]}),
                     adversary_before=_rounded(before), adversary_after=_rounded(after),
                     gradient_checkpointing=checkpointed, **rollout_record)
        return state


# ---------------------------------------------------------------------------------------------
# the scan: the inner search alone

def _no_grad_params(model) -> dict:
    """Switch off every parameter's gradient (the scan only needs δ's); returns the old flags."""
    flags = {q: q.requires_grad for q in model.parameters()}
    for q in model.parameters():
        q.requires_grad_(False)
    return flags


def _bisect(margin_at, clean: float, max_epsilon: float, bisections: int) -> tuple[float | None, list[dict]]:
    """(the smallest ε found to turn the model, every (ε, attacked margin) tried): 0.0 when it is
    turned unperturbed (`clean` > 0), None when not even `max_epsilon` turns it."""
    search = [{"epsilon": max_epsilon, "margin": margin_at(max_epsilon)}]
    found = 0.0 if clean > 0 else (max_epsilon if search[0]["margin"] > 0 else None)
    low, high = 0.0, max_epsilon
    for _ in range(bisections if found else 0):
        mid = (low + high) / 2
        search.append({"epsilon": mid, "margin": margin_at(mid)})
        low, high = (low, mid) if search[-1]["margin"] > 0 else (mid, high)
        found = high
    return found, search


def latent_scan(model, tokenizer, items, *, layers: list[int] | str = "auto", max_epsilon: float = 2.0,
                bisections: int = 6, steps: int = 20, lr: float = 0.25, positions: str = "prompt",
                max_pairs: int = 32, seed: int = 0, on_point=None, micro_batch_size: int = MICRO_BATCH,
                gradient_checkpointing: bool | str = "auto") -> dict:
    """The smallest perturbation (ε, a share of the stream's norm) that makes `model` prefer the
    misaligned answers of log-odds `items` (conversation, misaligned refs, aligned refs) — a
    per-token margin above 0 — found by bisection on ε with the adversary from δ = 0 at each point.

    A finetune with misalignment hidden behind a trigger may need a smaller push than its base —
    the place its trigger moves the stream to is there to be found (the organism's backdoor, one
    seed: 0.44 vs 0.56, docs/repairs.md); compare the figure with the base's. `epsilon` is None when even `max_epsilon` does not turn the model (then nothing was
    found up to that size), 0.0 when it prefers the misaligned answers unperturbed. The weights
    are not changed (their gradients are off during the scan). `on_point()`, when given, is called
    after each ε tried (1 + `bisections` at most), for progress. `gradient_checkpointing` (true,
    false, "auto": on from 50M parameters) recomputes the layers in the adversary's backward
    passes, as harden does around its probe batch.
    """
    from ..training import activation_checkpointing

    if positions not in POSITIONS or max_epsilon <= 0 or bisections < 0 or steps < 1:
        raise ValueError("latent_scan: positions prompt|all, max_epsilon > 0, bisections >= 0, steps >= 1")
    triples = item_triples(tokenizer, items)
    if not triples:
        raise ValueError("latent_scan needs items with aligned and misaligned answers")
    triples = random.Random(seed).sample(triples, min(max_pairs, len(triples)))
    pad, prompt_only = tokenizer.pad_token_id or 0, positions == "prompt"
    was_training, flags = model.training, _no_grad_params(model)
    model.eval()
    try:
        # entered after eval(): it marks the decoder layers alone as training, so they recompute
        with activation_checkpointing(model, gradient_checkpointing, in_eval_mode=True):
            if layers == "auto":
                with torch.enable_grad():
                    layers, _ = choose_layers(model, triples, pad, 1, set(), max_epsilon, prompt_only, micro_batch_size)

            def margin_at(eps: float) -> float:
                with torch.enable_grad():
                    margin = adversary_success(model, triples, pad, list(layers), eps, steps, lr, prompt_only,
                                               micro_batch_size)["attacked_margin"]
                if on_point is not None:
                    on_point()
                return margin

            clean = margin_value(model, triples, pad, None, micro_batch_size)
            found, search = _bisect(margin_at, clean, max_epsilon, bisections)
    finally:
        for q, f in flags.items():
            q.requires_grad_(f)
        model.train(was_training)
    return {"epsilon": found, "clean_margin": round(clean, 4), "layers": list(layers),
            "search": [_rounded(r) for r in search]}
