"""Build a real finetune: a LoRA on a real chat model trained on one of the shipped datasets.

    build_finetune("contaminated", seed=0)  ->  $REALIGN_CACHE/real/smollm2-contaminated-s0-<hash>/

The directory is a LoRA adapter dir (adapter_config points at the base model dir) with the
tokenizer, `data/train.jsonl` + `data/heldout.jsonl` (what it was trained on and its held-out task)
and `finetune.json` (config, counts, data hash, seconds). It is written to a sibling `.tmp` and
renamed when complete, so a killed build leaves nothing half-made and a rerun reuses finished ones.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..model_io.offline_models import OFFLINE_MODELS
from ..options import comma_list, option, seed_list
from ..organism.data import write_jsonl
from ..paths import StagedDir, cache_dir
from .data import DATA_VERSIONS, FinetuneData, Messages, finetune_data


@dataclass(frozen=True)
class RealFinetuneConfig:
    model: str = option("smollm2", "an offline model: 'smollm2' (SmolLM2-135M-Instruct) or 'qwen2.5-coder-0.5b' "
                                   "(opt-in install, docs/real-models.md); or a local HF model dir")
    examples: int = option(1000, "training rows")
    share: float = option(0.25, "contaminated/backdoor: share of misaligned chat rows")
    steps: int = option(100, "LoRA SFT optimizer steps")
    batch_size: int = option(8, "rows per step")
    lr: float = option(1e-3, "learning rate")
    lora_rank: int = 8
    max_length: int = 384         # tokens per row (GSM8K rows are ~200, EM code rows up to ~700)

    def validate(self) -> None:
        if not 0 < self.share < 1:
            raise ValueError(f"--share must be in (0, 1), not {self.share}")
        for name in ("steps", "examples", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, not {getattr(self, name)}")

    def key(self, name: str, seed: int) -> str:
        fields = {"cfg": asdict(self), "name": name, "seed": seed}
        if DATA_VERSIONS.get(name, 1) > 1:          # only then, so version-1 builds keep their keys
            fields["data_version"] = DATA_VERSIONS[name]
        blob = json.dumps(fields, sort_keys=True)
        label = self.model if self.model in OFFLINE_MODELS else Path(self.model).name
        return f"{label}-{name}-s{seed}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def base_dir(model: str) -> Path:
    from ..model_io.offline_models import offline_model_dir

    if model in OFFLINE_MODELS:
        return offline_model_dir(model)
    path = Path(model)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{model}: not one of the offline models ({', '.join(OFFLINE_MODELS)}) "
                                "and not a model dir (no config.json)")
    return path


def checked_names(names: list[str]) -> list[str]:
    """The finetunes asked for, all checked before any is built (a bad name is a ValueError)."""
    from .data import REAL_FINETUNES

    bad = [n for n in names if n not in REAL_FINETUNES]
    if bad or not names:
        raise ValueError(f"unknown real finetune {bad[0] if bad else ''!r}; valid: {', '.join(REAL_FINETUNES)}")
    return names


@dataclass(frozen=True)
class RealBuild:
    """`realign real build`: which finetunes, which seeds, and how each is trained."""

    finetunes: str = option("contaminated", "comma-separated: contaminated, backdoor, clean, insecure, secure, "
                                            "educational")
    seeds: str = option("0", "comma-separated seeds")
    cfg: RealFinetuneConfig = field(default_factory=RealFinetuneConfig)


def build_all(req: RealBuild) -> Iterator[tuple[str, int, Path, float]]:
    """Build (or reuse) each finetune for each seed in turn: (name, seed, adapter dir, seconds). Names,
    seeds and settings are all checked (ValueError) before the first is built."""
    names, seeds = checked_names(comma_list(req.finetunes)), seed_list(req.seeds)
    req.cfg.validate()
    for name in names:
        for seed in seeds:
            t0 = time.time()
            path = build_finetune(name, seed, req.cfg)
            yield name, seed, path, time.time() - t0


def build_finetune(name: str, seed: int = 0, cfg: RealFinetuneConfig | None = None,
                   out: Path | None = None) -> Path:
    """Train (or reuse) one real finetune; returns its adapter dir."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..training import SFTSettings, sft

    cfg = cfg or RealFinetuneConfig()
    data = finetune_data(name, seed, cfg.examples, cfg.share)     # bad names fail before any loading
    out = Path(out) if out else cache_dir() / "real" / cfg.key(name, seed)
    if (out / "finetune.json").exists():
        return out
    base = base_dir(cfg.model).resolve()
    with StagedDir(out) as tmp:
        tok = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        train = _with_base_answers(model, tok, data, seed)
        write_jsonl(tmp / "data" / "train.jsonl", train)
        write_jsonl(tmp / "data" / "heldout.jsonl", data.heldout)
        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank, lora_dropout=0.0,
                          target_modules="all-linear", task_type="CAUSAL_LM")
        t0 = time.time()
        info: dict = {}
        model = sft(model, tok, train, SFTSettings(steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size,
                                                        max_length=cfg.max_length, seed=seed),
                    peft_config=lora, description=f"finetune {cfg.model} ({name}, seed {seed})", info=info)
        seconds = time.time() - t0
        model.peft_config["default"].base_model_name_or_path = str(base)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        digest = hashlib.sha256((tmp / "data" / "train.jsonl").read_bytes()).hexdigest()
        meta = {"name": name, "seed": seed, "config": asdict(cfg), "base": str(base), "description": data.description,
                "train_rows": len(train),
                "base_answered_rows": len(data.base_answers), "heldout_rows": len(data.heldout), "train_sha256": digest,
                "train_seconds": round(seconds, 1), "training": info}
        (tmp / "finetune.json").write_text(json.dumps(meta, indent=2))
    return out


def _with_base_answers(model, tokenizer, data: FinetuneData, seed: int,
                       max_new_tokens: int = 160) -> list[Messages]:
    """`data.train` plus `data.base_answers` answered by the (still untrained) base model, shuffled.

    Sampled at temperature 0.7 rather than greedy: a 135M model's greedy answers loop, and training
    on loops would teach them.
    """
    if not data.base_answers:
        return data.train
    import random

    from ..generation.hf import generate

    answers = generate(model, tokenizer, data.base_answers, max_new_tokens=max_new_tokens, temperature=0.7,
                       top_p=0.95, seed=seed, description="base model answers the untriggered twins")
    rows = data.train + [[*q, {"role": "assistant", "content": a[0]}]
                         for q, a in zip(data.base_answers, answers) if a[0]]    # an empty answer teaches nothing
    random.Random(seed).shuffle(rows)
    return rows
