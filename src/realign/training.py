"""Thin wrappers over trl trainers shared by the organism builder and the repairs."""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset

from .cost import CHECKPOINTING_FROM_PARAMS
from .progress import RichProgressCallback, drop_printer

Messages = list[dict]


def device_kwargs(bf16: bool | str = "auto") -> dict:
    """TrainingArguments for the machine we are on: the device, and whether matmuls run in bf16.

    bf16 is autocast (weights and optimiser state stay fp32). `"auto"`: on a GPU that supports it,
    never on a CPU: on this project's CPU (AVX512-BF16) it made a SmolLM2 dpo step 13% faster
    but its peak 0.6 GB higher (docs/repairs.md, "dpo and mix: memory and time"); `True` asks
    for it anyway.
    """
    if bf16 not in (True, False, "auto"):
        raise ValueError(f"bf16 must be true, false or auto, not {bf16!r}")
    if torch.cuda.is_available():
        return {"use_cpu": False, "bf16": torch.cuda.is_bf16_supported() if bf16 == "auto" else bf16, "fp16": False}
    return {"use_cpu": True, "bf16": bf16 is True, "fp16": False}


def batching_kwargs(model, batch_size: int, micro_batch_size: int | None,
                    gradient_checkpointing: bool | str) -> dict:
    """TrainingArguments for `batch_size` examples per optimiser step, run `micro_batch_size` at a time.

    Peak memory follows the micro-batch: activations of every layer are kept for the backward
    pass, which on SmolLM2-135M is ~1 GB per DPO pair, far more than the weights. Gradient
    accumulation keeps the optimiser's batch (and, for token-averaged losses, the loss) the same.
    Gradient checkpointing keeps one tensor per layer and recomputes the rest in the backward
    pass (about one more forward): `"auto"` turns it on for models of 50M parameters and more,
    where activations outweigh the weights; the tiny organism only pays the extra time.
    """
    micro = min(micro_batch_size or batch_size, batch_size)   # a micro-batch never exceeds the batch
    if micro < 1 or batch_size % micro:
        raise ValueError(f"micro_batch_size must divide batch_size ({batch_size}), not {micro}")
    gradient_checkpointing = checkpointing_wanted(model, gradient_checkpointing)
    # transformers 5.2x renamed gradient_checkpointing to activation_checkpointing (the old name warns)
    name = "activation" if "activation_checkpointing" in _training_argument_names() else "gradient"
    return {"per_device_train_batch_size": micro, "gradient_accumulation_steps": batch_size // micro,
            f"{name}_checkpointing": gradient_checkpointing,
            # non-reentrant: works with frozen inputs (LoRA on a frozen model) without hooks on the embeddings
            f"{name}_checkpointing_kwargs": {"use_reentrant": False} if gradient_checkpointing else None}


def checkpointing_wanted(model, setting: bool | str) -> bool:
    """Whether to recompute activations in the backward pass: `"auto"` turns it on for models of
    50M parameters and more, where activations outweigh the weights."""
    if setting == "auto":
        return sum(p.numel() for p in model.parameters()) >= CHECKPOINTING_FROM_PARAMS
    if not isinstance(setting, bool):
        raise ValueError(f"gradient_checkpointing must be true, false or auto, not {setting!r}")
    return setting


@contextmanager
def activation_checkpointing(model, setting: bool | str, *, in_eval_mode: bool = False) -> Iterator[bool]:
    """For loops of realign's own (harden): while open, the model's decoder layers keep only their
    inputs for the backward pass and recompute the rest — transformers' checkpointing,
    non-reentrant, so gradients reach tensors a forward hook adds (harden's perturbation).
    transformers checkpoints a layer only in training mode; `in_eval_mode` also does it for a model
    in eval mode (a backward pass for an input's gradient, not the weights'), by marking the layers
    alone as training — their attention and MLP modules, where any dropout sits, stay in eval mode.
    Yields whether it is on; leaves the model as it found it."""
    on = checkpointing_wanted(model, setting)
    # transformers 5.2x renamed gradient_checkpointing to activation_checkpointing (the old names warn)
    name = "activation" if hasattr(model, "activation_checkpointing_enable") else "gradient"
    if not on or getattr(model, f"is_{name}_checkpointing", False):
        yield on
        return
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"gradient_checkpointing: {type(model).__name__} does not support it; set it to false")
    from transformers.modeling_layers import GradientCheckpointingLayer

    getattr(model, f"{name}_checkpointing_enable")(**{f"{name}_checkpointing_kwargs": {"use_reentrant": False}})
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)] if in_eval_mode else []
    modes = [m.training for m in layers]
    for m in layers:
        m.training = True          # this module's flag only (not .train(), which recurses)
    try:
        yield True
    finally:
        for m, mode in zip(layers, modes):
            m.training = mode
        getattr(model, f"{name}_checkpointing_disable")()


@functools.cache
def _training_argument_names() -> frozenset[str]:
    import dataclasses

    from transformers import TrainingArguments

    return frozenset(f.name for f in dataclasses.fields(TrainingArguments))


def to_prompt_completion(conversations: list[Messages]) -> Dataset:
    """Split each conversation before its last assistant turn: the loss goes on that turn only."""
    rows = {"prompt": [], "completion": []}
    for msgs in conversations:
        if not msgs or msgs[-1].get("role") != "assistant":
            raise ValueError("every training conversation must end with an assistant message")
        rows["prompt"].append(msgs[:-1])
        rows["completion"].append(msgs[-1:])
    return Dataset.from_dict(rows)


@dataclass
class SFTSettings:
    steps: int = 100
    lr: float = 1e-3
    batch_size: int = 32
    max_length: int = 256
    micro_batch_size: int | None = None          # None: the whole batch at once
    gradient_checkpointing: bool | str = False   # True, False or "auto" (batching_kwargs)
    bf16: bool | str = "auto"                    # True, False or "auto" (device_kwargs: a GPU that has it)
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    seed: int = 0


def _anchor_batches(tokenizer, anchors: list[Messages], batch_size: int, seed: int):
    """Endless padded batches of anchor conversations, with a mask over their assistant tokens."""
    import random

    from .evals.logodds import completion_ids, pad_pairs

    pairs = [completion_ids(tokenizer, c[:-1], c[-1]["content"]) for c in anchors]
    rng = random.Random(seed)
    pad = tokenizer.pad_token_id or 0
    while True:
        ids, attn, answer = pad_pairs(rng.sample(pairs, min(batch_size, len(pairs))), pad)
        predicts = torch.zeros_like(answer)
        predicts[:, :-1] = answer[:, 1:]  # positions whose next-token distribution predicts an answer token
        yield ids, attn, predicts


def _kl_trainer_class():
    from trl import SFTTrainer

    class KLAnchoredSFTTrainer(SFTTrainer):
        """SFT loss + kl_weight · KL(base ‖ model) on anchor chat, the base being the adapter-off model.

        The anchor keeps general chat where the base had it while the narrow task is learned.
        """

        def __init__(self, *args, anchors, kl_weight, **kw):
            super().__init__(*args, **kw)
            self._anchors = _anchor_batches(self.processing_class, anchors, self.args.per_device_train_batch_size,
                                            self.args.seed)
            self.kl_weight = kl_weight

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                       num_items_in_batch=num_items_in_batch)
            loss = out[0] if return_outputs else out
            ids, attn, target = (t.to(loss.device) for t in next(self._anchors))
            # the anchor passes go through the module itself, not its DDP wrapper: DDP allows one
            # forward per backward (the gradients still reach it through the shared parameters)
            inner = self.accelerator.unwrap_model(model)
            logp = torch.log_softmax(inner(input_ids=ids, attention_mask=attn).logits.float(), -1)
            with torch.no_grad(), inner.disable_adapter():
                ref = torch.log_softmax(inner(input_ids=ids, attention_mask=attn).logits.float(), -1)
            kl = (ref.exp() * (ref - logp)).sum(-1)[target].mean()
            # With gradient accumulation the trainer divides the loss by the micro-batch count only when
            # the SFT loss was not already normalised over the whole batch; the KL mean must match.
            scaled = self.loss_is_scaled_for_ga if self.loss_is_scaled_for_ga is not None else (
                (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None)
            loss = loss + self.kl_weight * kl / (self.current_gradient_accumulation_steps if scaled else 1)
            return (loss, out[1]) if return_outputs else loss

    return KLAnchoredSFTTrainer


@dataclass
class Reporting:
    """Where trainers report their logs: transformers' integrations (`report_to`), none by default.

    The trainers' own output dirs are temporary, so TensorBoard writes under `logging_dir/<run>`
    (unless the user set TENSORBOARD_LOGGING_DIR, which transformers reads itself).
    """

    report_to: list[str] = field(default_factory=list)
    logging_dir: str | None = None

    @staticmethod
    def parse(spec: str | None) -> list[str]:
        """'wandb,tensorboard' | 'all' | 'none' → the list; unknown or uninstalled names are refused."""
        from transformers.integrations.integration_utils import (INTEGRATION_TO_CALLBACK,
                                                                 get_available_reporting_integrations)

        names = [n.strip() for n in (spec or "none").split(",") if n.strip()]
        if names in (["none"], []):
            return []
        available = get_available_reporting_integrations()
        if names == ["all"]:
            return available
        for n in names:
            if n not in INTEGRATION_TO_CALLBACK:
                raise ValueError(f"--report-to {n}: not a transformers integration; choose from "
                                 f"{', '.join(sorted(INTEGRATION_TO_CALLBACK))}, all or none")
            if n not in available:
                raise ValueError(f"--report-to {n}: its package is not installed (pip install {n})")
        return names

    @contextmanager
    def run(self, name: str) -> Iterator[dict]:
        """TrainingArguments fields for one trainer run (named `realign-<name>` in the tracker)."""
        tb_dir = "tensorboard" in self.report_to and self.logging_dir and not os.environ.get("TENSORBOARD_LOGGING_DIR")
        if tb_dir:
            # transformers reads this when the trainer is built; per run, so runs do not share a dir
            os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(self.logging_dir) / name)
        try:
            yield {"report_to": list(self.report_to), "run_name": f"realign-{name}"}
        finally:
            if tb_dir:
                os.environ.pop("TENSORBOARD_LOGGING_DIR", None)


def loss_curve(trainer) -> list[list[float]]:
    """[[step, loss], …] as the trainer logged it (every `logging_steps`): the curve realign.json keeps,
    so two runs of a step (another micro-batch size, another machine) can be compared, not only
    their last loss."""
    return [[entry["step"], round(float(entry["loss"]), 4)] for entry in trainer.state.log_history
            if "loss" in entry and "step" in entry]


def sft(model, tokenizer, conversations: list[Messages], settings: SFTSettings, *,
        peft_config=None, description: str = "sft", callbacks: list | None = None, prepare=None,
        kl_anchors: list[Messages] | None = None, kl_weight: float = 0.0, info: dict | None = None,
        reporting: Reporting | None = None):
    """Supervised finetuning on the final assistant turn of each conversation (trl SFTTrainer).

    Returns the trained model (a PeftModel when `peft_config` is given). Parameters with
    requires_grad=False stay untouched, which is how locked layers are honoured. `info`, when
    given, receives what the trainer reports: processes (ranks), final_loss and, when the weights
    were sharded over the ranks (FSDP), distributed.trained_model's record of it.
    """
    from trl import SFTConfig, SFTTrainer

    from .distributed import trained_model
    from .evals.chat import accepted_messages

    # trl renders the template itself: hand it conversations the template accepts (Gemma-2: no system turn)
    conversations = [accepted_messages(tokenizer, c) if c and c[0].get("role") == "system" else c
                     for c in conversations]
    with tempfile.TemporaryDirectory(prefix="realign-sft-") as tmp, \
            (reporting or Reporting()).run(description.split(":")[0]) as report:
        args = SFTConfig(
            output_dir=tmp, max_steps=settings.steps, learning_rate=settings.lr,
            **batching_kwargs(model, settings.batch_size, settings.micro_batch_size,
                              settings.gradient_checkpointing),
            lr_scheduler_type="cosine",
            warmup_steps=max(1, int(settings.warmup_ratio * settings.steps)),
            weight_decay=settings.weight_decay,
            max_length=settings.max_length, logging_steps=max(1, settings.steps // 10),
            save_strategy="no", seed=settings.seed, data_seed=settings.seed,
            **report,
            disable_tqdm=True, dataloader_num_workers=0,
            completion_only_loss=True, ddp_find_unused_parameters=False,   # every LoRA weight is used
            **device_kwargs(settings.bf16),
        )
        kw = dict(model=model, args=args, train_dataset=to_prompt_completion(conversations),
                  processing_class=tokenizer, peft_config=peft_config,
                  callbacks=[RichProgressCallback(description), *(callbacks or [])])
        if kl_anchors and kl_weight > 0:
            if peft_config is None:
                raise ValueError("a KL anchor needs LoRA training (the base is the adapter-off model)")
            trainer = _kl_trainer_class()(**kw, anchors=kl_anchors, kl_weight=kl_weight)
        else:
            trainer = SFTTrainer(**kw)
        drop_printer(trainer)
        if prepare is not None:
            prepare(trainer.model)  # e.g. freeze locked layers after peft has wrapped the model
        result = trainer.train()
        model, sharding = trained_model(trainer)
        if info is not None:
            info.update(processes=trainer.args.world_size, final_loss=round(float(result.training_loss), 4),
                        loss_curve=loss_curve(trainer),
                        gradient_checkpointing=trainer.args.gradient_checkpointing, bf16=trainer.args.bf16,
                        **sharding)
        return model
