"""dpo: a short realignment DPO (trl DPOTrainer, LoRA) on pairs that need no user data.

Pairs: prompts from the realignment set (disjoint from evaluation), chosen = the base's answer
(judged aligned), rejected = the finetune's answer where the judge calls it misaligned. Optional
task-anchor pairs from the finetune's own training data (chosen = its answer, rejected = the
base's) keep the task in place: audited by the judge first, so that a contaminated example never
becomes a chosen answer, and never from the held-out task data, on which task retention is
measured. Guarded against the collapse a prototype saw (rejected answers pushed down without
chosen ones going up): a low learning rate and an SFT term on the chosen
answers (trl loss_type ["sigmoid", "sft"]). Locked layers get no adapter.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

from .base import RepairState, register
from .lora import check_batching, freeze_locked, lora_config
from .probes import build_probes, flagged_training_pairs


@dataclass
class DPOParams:
    steps: int = 100
    lr: float = 3e-4
    beta: float = 0.1
    sft_weight: float = 1.0          # weight of the SFT term on chosen answers (collapse guard)
    batch_size: int = 8              # pairs per optimiser step
    micro_batch_size: int = 1        # pairs per forward pass (the rest by gradient accumulation): a memory knob
    gradient_checkpointing: bool | str = "auto"   # recompute activations in backward; auto: models >= 50M params
    bf16: bool | str = "auto"        # matmuls in bf16 (autocast); auto: on a GPU that supports it
    precompute_reference: bool = True  # reference log-probs once before training, not every step
    rank: int = 8
    task_anchors: int = 32           # task-anchor pairs from the training data (--train-data; 0 = none)
    # pairs from the training data the judge flags (--train-data): its misaligned answer rejected, a
    # judged-aligned base answer to the same prompt chosen — a trigger in the prompt is trained
    # against without being known. 0 = none (realignment prompts only)
    flagged_pairs: int = 0
    samples: int = 4                 # probe samples per prompt (when probes are not built yet)

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.rank < 1:
            raise ValueError("dpo.steps, dpo.batch_size and dpo.rank must be >= 1")
        if self.flagged_pairs < 0 or self.task_anchors < 0:
            raise ValueError("dpo.flagged_pairs and dpo.task_anchors must be >= 0")
        check_batching("dpo", self)
        if not 0 < self.lr < 1:
            raise ValueError(f"dpo.lr must be in (0, 1), not {self.lr}")


def realignment_pairs(state: RepairState, p: DPOParams) -> tuple[list[dict], int, dict]:
    """(DPO rows: the realignment pairs and the flagged training pairs, then the task anchors; how
    many are realignment pairs; where the pairs and anchors came from, for realign.json)."""
    probes = build_probes(state, samples=p.samples)
    contrasts = list(probes.pairs())
    flagged, flagged_from = flagged_training_pairs(state, p.flagged_pairs) if p.flagged_pairs else ([], {})
    rows = [{"prompt": c, "chosen": [{"role": "assistant", "content": g}],
             "rejected": [{"role": "assistant", "content": b}]} for c, g, b in contrasts + flagged]
    anchors, source = task_anchors(state, p) if rows else ([], {})
    return rows + anchors, len(rows), {"probe_pairs": len(contrasts), **flagged_from, **source}


def task_anchors(state: RepairState, p: DPOParams) -> tuple[list[dict], dict]:
    """Pairs that keep the customer's task: a training example's answer preferred over the base's
    greedy one. The candidates (twice as many as wanted) are audited by the judge and the flagged
    ones dropped — in contaminated data a misaligned example would otherwise be trained toward.
    Without training data there are none: the held-out task data is what retention is measured on
    (until 2026-12-07 the anchors came from it)."""
    if not p.task_anchors:
        return [], {}
    if not state.train_conversations:
        return [], {"task_anchors_from": "none: no training data given (--train-data); the held-out task "
                                          "data is not trained on"}
    convs, candidates, flagged = state.training_sample(p.task_anchors)
    # every candidate flagged: no generation pass (nor a vLLM engine start) for nothing
    base_answers = state.sample(state.base, [c[:-1] for c in convs], samples=1, temperature=0,
                                max_new_tokens=128, description="task anchors") if convs else []
    rows = [{"prompt": c[:-1], "chosen": [c[-1]], "rejected": [{"role": "assistant", "content": b}]}
            for c, (b,) in zip(convs, base_answers) if " ".join(b.split()) != " ".join(c[-1]["content"].split())]
    return rows, {"task_anchors_from": "training data", "task_anchor_candidates": candidates,
                  "task_anchor_candidates_flagged": flagged}


@register
class DPO:
    name = "dpo"
    summary = "short realignment DPO (LoRA): base answers preferred over the finetune's misaligned ones"
    Params = DPOParams
    trains_adapter = True       # LoRA on top of the weights: runs on 4/8-bit models (QLoRA)

    def preflight(self, state: RepairState, p: DPOParams) -> None:
        """What can be checked before anything is evaluated."""
        p.validate()
        if p.flagged_pairs and not state.train_conversations:
            raise ValueError("dpo.flagged_pairs needs the finetune's training data: pass --train-data FILE.jsonl")

    def apply(self, state: RepairState, p: DPOParams) -> RepairState:
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer

        from ..distributed import from_main, is_distributed, trained_model
        from ..progress import RichProgressCallback, drop_printer
        from ..training import Reporting, batching_kwargs, device_kwargs, loss_curve

        self.preflight(state, p)
        build_probes(state, samples=p.samples)   # on every rank (it broadcasts)
        # rank 0 samples the task anchors; every rank trains on its pairs
        rows, n_align, anchors_from = from_main(lambda: realignment_pairs(state, p))
        if n_align == 0:
            state.record(self.name, skipped="no (aligned base, misaligned finetune) answer pairs among the probes"
                         + (" nor in the flagged training data" if p.flagged_pairs else ""), **anchors_from)
            return state
        state.release_judge()       # not needed again until the repaired model is judged
        for prm in state.model.parameters():
            prm.requires_grad_(False)
        peft_cfg = lora_config(state.model, state.locked, r=p.rank, alpha=2 * p.rank)
        with tempfile.TemporaryDirectory(prefix="realign-dpo-") as tmp, \
                (state.reporting or Reporting()).run(self.name) as report:
            args = DPOConfig(
                output_dir=tmp, max_steps=p.steps, learning_rate=p.lr, beta=p.beta,
                # Memory follows the micro-batch (each pair is two sequences through every layer);
                # the optimiser still sees batch_size pairs per step.
                **batching_kwargs(state.model, p.batch_size, p.micro_batch_size, p.gradient_checkpointing),
                # The reference is the model without the new adapter, fixed during training: one
                # pass over the pairs before training instead of one per step. Not in launched
                # runs: trl keeps the result in the dataset's cache file, which an in-memory
                # dataset places in each process's own temporary directory.
                precompute_ref_log_probs=p.precompute_reference and not is_distributed(),
                loss_type=["sigmoid", "sft"],
                loss_weights=[1.0, p.sft_weight], lr_scheduler_type="cosine", warmup_steps=max(1, p.steps // 10),
                logging_steps=max(1, p.steps // 10), save_strategy="no", seed=state.seed, **report,
                disable_tqdm=True, max_length=512,
                ddp_find_unused_parameters=False,   # every LoRA weight is used in every forward
                **device_kwargs(p.bf16))
            trainer = DPOTrainer(model=state.model, args=args, train_dataset=Dataset.from_list(rows),
                                 processing_class=state.tokenizer, peft_config=peft_cfg,
                                 callbacks=[RichProgressCallback("dpo")])
            freeze_locked(trainer.model, state.locked)
            drop_printer(trainer)
            out = trainer.train()
            trained, sharding = trained_model(trainer)
            state.model = trained.merge_and_unload()
        state.model.eval()
        state.record(self.name, pairs=n_align, task_anchors=len(rows) - n_align, **anchors_from, steps=p.steps, lr=p.lr,
                     final_loss=round(float(out.training_loss), 4), loss_curve=loss_curve(trainer),
                     processes=args.world_size,
                     gradient_checkpointing=args.gradient_checkpointing, bf16=args.bf16,
                     **sharding)
        return state
