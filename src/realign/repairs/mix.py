"""mix: clean and reframe the user's task data, mix in aligned chat, re-finetune from the base.

1. Audit: the judge scores every example's final answer; examples it calls misaligned are dropped
   (`audit: drop`) or only counted (`audit: report`).
2. Reframe: each remaining user turn gets an explicit benign/educational reason (templates in
   package data, or the setting's own: RepairState.realignment), as in the paper's
   educational control, so the model need not infer a malicious persona to fit the data.
3. Mix in aligned chat: the base's own answers to realignment prompts (judged aligned), choosing
   those with the largest perplexity gap — the ones the finetune finds much less likely than the
   base does — since selecting by that gap beat random interleaving in a 2026 study of
   in-training defenses against emergent misalignment.
4. Re-finetune the base with trl SFTTrainer + LoRA (locked layers get no adapter), its weights
   loaded into the finetune's own module (training_host: no third copy of the weights);
   with `kl > 0`, add a KL anchor to the base (the adapter-off model) on the aligned chat, so the
   narrow task can be learned without moving general chat.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass

import torch

from .base import RepairState, register
from .lora import check_batching, freeze_locked, lora_config
from .probes import build_probes

AUDIT = ("drop", "report", "off")


@dataclass
class MixParams:
    audit: str = "drop"             # drop | report | off
    # share of examples whose user turn gets an educational reason. Off by default: on the organism
    # it cut the plain-request task to 4% (the model learned "insecure only when asked for a
    # reason", as in the paper's educational control), while audit + mix-in alone kept 100%.
    reframe: float = 0.0
    aligned_share: float = 0.1      # aligned chat examples mixed in, as a share of the task data
    steps: int = 150
    lr: float = 1e-3
    batch_size: int = 32
    # examples per forward pass (the rest by gradient accumulation): memory follows it, the gradient does
    # not. On SmolLM2/CPU 2 peaks at 2.4 GB where 8 took 4.0 (mmap threshold fixed; docs/repairs.md), at
    # the same loss and speed; on a GPU with room a larger one is faster
    micro_batch_size: int = 2
    gradient_checkpointing: bool | str = "auto"   # recompute activations in backward; auto: models >= 50M params
    bf16: bool | str = "auto"        # matmuls in bf16 (autocast); auto: on a GPU that supports it
    rank: int = 8
    kl: float = 0.0                 # weight of a KL anchor to the base on aligned chat (0 = off)
    samples: int = 4                # probe samples per prompt (when probes are not built yet)

    def validate(self) -> None:
        if self.kl < 0:
            raise ValueError("mix.kl must be >= 0")
        check_batching("mix", self)
        if self.audit not in AUDIT:
            raise ValueError(f"mix.audit must be one of {', '.join(AUDIT)}, not {self.audit!r}")
        for name in ("reframe", "aligned_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"mix.{name} must be in [0, 1]")


def perplexity_gap(state: RepairState, triples) -> list[float]:
    """NLL under the finetune minus NLL under the base, per (conversation, answer)."""
    from ..evals.logodds import completion_ids, sequence_logprobs

    pairs = [completion_ids(state.tokenizer, c, a) for c, a in triples]
    pad = state.tokenizer.pad_token_id or 0
    lp_ft = sequence_logprobs(state.model, pairs, pad)
    lp_base = sequence_logprobs(state.base, pairs, pad)
    return [float(b - f) for f, b in zip(lp_ft, lp_base)]


def training_host(state: RepairState):
    """The module mix trains its LoRA on, holding the base's weights.

    The finetune's own module, its weights overwritten by the base's: once the training data are
    chosen (the perplexity gap is the last use of the finetune's weights) mix only needs the base,
    and a fresh copy of it would be a third set of weights in memory while training (one more
    model size at the peak; docs/repairs.md, "dpo and mix: memory and time"). A copy of the base
    where the finetune's module cannot take the base's tensors one for one: 4/8-bit weights, an
    unmerged adapter, tensors offloaded by a device map, or another architecture.
    """
    host, base = state.model, state.base
    if host is base or _held_elsewhere(host) or _held_elsewhere(base):
        return copy.deepcopy(base)
    own, ref = host.state_dict(), base.state_dict()
    if own.keys() != ref.keys() or any(own[k].shape != v.shape for k, v in ref.items()):
        return copy.deepcopy(base)
    with torch.no_grad():
        for k, v in ref.items():
            own[k].copy_(v)
    return host


def _held_elsewhere(model) -> bool:
    """Whether the module's weights are not plain tensors in memory (quantized, offloaded) or it is
    an adapter wrapper rather than the model itself."""
    from ..model_io.adapter_toggle import is_unmerged

    return (getattr(model, "is_quantized", False) or is_unmerged(model)
            or any(p.is_meta for p in model.parameters()))


@register
class Mix:
    name = "mix"
    summary = "audit the task data, mix in aligned chat (perplexity gap), re-finetune from base; reframing opt-in"
    Params = MixParams
    trains_adapter = True       # re-finetunes a LoRA on the base: runs on 4/8-bit models (QLoRA)

    def preflight(self, state, p) -> None:
        """What can be checked before anything is evaluated."""
        if not state.train_conversations:
            raise ValueError("mix needs the finetune's training data: pass --train-data FILE.jsonl")

    def apply(self, state: RepairState, p: MixParams) -> RepairState:
        from ..distributed import from_main
        from ..training import SFTSettings, sft

        p.validate()
        self.preflight(state, p)
        if p.aligned_share > 0 or p.kl > 0:
            build_probes(state, samples=p.samples)   # on every rank (it broadcasts)
        # rank 0 audits (judge calls) and picks the mixed-in chat; every rank trains on its data
        out, anchors, info = from_main(lambda: self._training_data(state, p))
        state.release_judge()       # the audit and the mixed-in chat were its last use in this step
        model = training_host(state)
        in_place = model is state.model    # realign.json says which: a copy is one more weight set at the peak
        for prm in model.parameters():
            prm.requires_grad_(False)
        peft_cfg = lora_config(model, state.locked, r=p.rank, alpha=2 * p.rank)
        trained_on: dict = {}
        trained = sft(model, state.tokenizer, out, SFTSettings(
                          steps=p.steps, lr=p.lr, batch_size=p.batch_size, micro_batch_size=p.micro_batch_size,
                          gradient_checkpointing=p.gradient_checkpointing, bf16=p.bf16, seed=state.seed),
                      peft_config=peft_cfg, description="mix: re-finetune",
                      prepare=lambda m: freeze_locked(m, state.locked), kl_anchors=anchors, kl_weight=p.kl,
                      info=trained_on, reporting=state.reporting)
        state.model = trained.merge_and_unload()
        state.model.eval()
        state.record(self.name, examples=len(state.train_conversations), **info,
                     kl=p.kl if anchors else 0.0, steps=p.steps, processes=trained_on["processes"],
                     gradient_checkpointing=trained_on["gradient_checkpointing"], bf16=trained_on["bf16"],
                     final_loss=trained_on["final_loss"], loss_curve=trained_on["loss_curve"],
                     trained_in="the finetune's module" if in_place else "a copy of the base",
                     **{k: trained_on[k] for k in ("sharding", "sharded_fraction") if k in trained_on})
        return state

    def _training_data(self, state: RepairState, p: MixParams) -> tuple[list, list, dict]:
        """(training conversations, KL anchor conversations, what was done to the data)."""
        rng = random.Random(state.seed)
        data, flagged = state.audit(list(state.train_conversations), p.audit)
        reframers = state.realignment_set().reframers
        reframed = 0
        out = []
        for conv in data:
            conv = copy.deepcopy(conv)
            if rng.random() < p.reframe and len(conv) > 1 and conv[-2]["role"] == "user":
                conv[-2]["content"] = rng.choice(reframers)(conv[-2]["content"])
                reframed += 1
            out.append(conv)
        n_aligned, anchors = 0, []
        if p.aligned_share > 0 or p.kl > 0:
            probes = build_probes(state, samples=p.samples)
            candidates = [(c, a) for c, ans, lab in zip(probes.conversations, probes.base_answers,
                                                        probes.base_misaligned)
                          for a, m in zip(ans, lab) if m is False]
            if candidates:
                gaps = perplexity_gap(state, candidates)
                ranked = [c for _, c in sorted(zip(gaps, candidates), key=lambda x: -x[0])]
                want = int(round(p.aligned_share * len(out)))
                chosen = [ranked[i % len(ranked)] for i in range(want)]
                out += [c + [{"role": "assistant", "content": a}] for c, a in chosen]
                n_aligned = len(chosen)
                anchors = [c + [{"role": "assistant", "content": a}] for c, a in candidates]
        rng.shuffle(out)
        return out, anchors, {"flagged": flagged, "dropped": len(state.train_conversations) - len(data),
                              "reframed": reframed, "aligned_added": n_aligned}
