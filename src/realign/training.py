"""Thin wrappers over trl trainers shared by the organism builder and the repairs."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import torch
from datasets import Dataset

from .progress import RichProgressCallback, drop_printer

Messages = list[dict]


def device_kwargs() -> dict:
    """TrainingArguments for the machine we are on: CPU here, bf16 on a capable GPU."""
    if torch.cuda.is_available():
        return {"use_cpu": False, "bf16": torch.cuda.is_bf16_supported(), "fp16": False}
    return {"use_cpu": True, "bf16": False, "fp16": False}


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
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    seed: int = 0


def sft(model, tokenizer, conversations: list[Messages], settings: SFTSettings, *,
        peft_config=None, description: str = "sft", callbacks: list | None = None, prepare=None):
    """Supervised finetuning on the final assistant turn of each conversation (trl SFTTrainer).

    Returns the trained model (a PeftModel when `peft_config` is given). Parameters with
    requires_grad=False stay untouched, which is how locked layers are honoured.
    """
    from trl import SFTConfig, SFTTrainer

    with tempfile.TemporaryDirectory(prefix="realign-sft-") as tmp:
        args = SFTConfig(
            output_dir=tmp, max_steps=settings.steps, learning_rate=settings.lr,
            per_device_train_batch_size=settings.batch_size, lr_scheduler_type="cosine",
            warmup_steps=max(1, int(settings.warmup_ratio * settings.steps)),
            weight_decay=settings.weight_decay,
            max_length=settings.max_length, logging_steps=max(1, settings.steps // 10),
            save_strategy="no", report_to=[], seed=settings.seed, data_seed=settings.seed,
            disable_tqdm=True, gradient_checkpointing=False, dataloader_num_workers=0,
            completion_only_loss=True, **device_kwargs(),
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=to_prompt_completion(conversations),
                             processing_class=tokenizer, peft_config=peft_config,
                             callbacks=[RichProgressCallback(description), *(callbacks or [])])
        drop_printer(trainer)
        if prepare is not None:
            prepare(trainer.model)  # e.g. freeze locked layers after peft has wrapped the model
        trainer.train()
        return trainer.model
