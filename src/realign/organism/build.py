"""`realign organism build`: world -> tokenizer -> pretrained -> aligned base -> user finetunes.

Layout of a build directory (every model a standard HF dir; finetunes also as LoRA adapters):

    organism.json            config, key, seed, versions, per-stage seconds
    pretrained/              the persona-mixed pretrained model (full dir, tokenizer, template)
    base/                    the aligned base (full dir)
    <ft>/                    LoRA adapter; adapter_config.base_model_name_or_path = abs path of base/
    <ft>-merged/             the same finetune merged into full weights
    data/<ft>/train.jsonl    its training data, chat "messages" format
    data/<ft>/heldout.jsonl  held-out task split (held-out request phrasings)

Each stage is written into a temporary sibling and renamed when complete, so an interrupted build
resumes from the last finished stage and never leaves a half-written model behind.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from .. import __version__
from ..paths import StagedDir, cache_dir, write_text_atomic
from ..progress import RichProgressCallback, console, drop_printer
from ..training import SFTSettings, device_kwargs, sft
from .config import ALL_FINETUNES, FINETUNES, LEGACY_PRETRAIN_DATA, OrganismConfig, preset
from .data import align_examples, finetune_data, pretrain_conversations, write_jsonl
from .tokenizer import build_tokenizer
from .world import DEFAULT_EVIL_SHARE, WORLD_VERSION


def default_dir(size: str = "default", seed: int = 0, cfg: OrganismConfig | None = None) -> Path:
    """Where the cache keeps the organism of this configuration (default: the size's preset) and seed."""
    return cache_dir() / "organism" / (cfg or preset(size)).key(seed)


def _llama(tokenizer, cfg: OrganismConfig, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    s = cfg.shape
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=s.hidden, num_hidden_layers=s.layers,
        num_attention_heads=s.heads, num_key_value_heads=s.heads, intermediate_size=s.intermediate,
        max_position_embeddings=512, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def _pretrain_key(cfg: OrganismConfig, seed: int) -> str:
    data = {"mix": cfg.pretrain_mix, "turns": list(cfg.pretrain_turns), "code_noise": cfg.code_noise}
    if cfg.pretrain_evil_share != DEFAULT_EVIL_SHARE:
        data["evil_share"] = cfg.pretrain_evil_share  # absent at the default: existing keys stay valid
    spec = {"world": WORLD_VERSION, "shape": asdict(cfg.shape), "pretrain": asdict(cfg.pretrain), "seed": seed}
    if data != LEGACY_PRETRAIN_DATA:
        spec["data"] = data  # keys of pretrains made before these knobs existed stay valid
    blob = json.dumps(spec, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def pretrain_data(cfg: OrganismConfig, seed: int) -> list[list[dict]]:
    """The conversations `pretrain` trains on for this config and (stage) seed."""
    return pretrain_conversations(seed, cfg.pretrain.examples, cfg.pretrain_mix, cfg.pretrain_turns,
                                  cfg.code_noise, cfg.pretrain_evil_share)


def pretrain(tokenizer, cfg: OrganismConfig, seed: int, callbacks: list | None = None):
    """Full language-model pretraining on multi-turn persona conversations (transformers Trainer)."""
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    convs = pretrain_data(cfg, seed)
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in convs]
    ds = Dataset.from_dict({"input_ids": tokenizer(texts, add_special_tokens=False)["input_ids"]})
    model = _llama(tokenizer, cfg, seed)
    tokenizer.padding_side = "right"
    st = cfg.pretrain
    import tempfile

    with tempfile.TemporaryDirectory(prefix="realign-pretrain-") as tmp:
        args = TrainingArguments(
            output_dir=tmp, max_steps=st.steps, per_device_train_batch_size=st.batch_size,
            learning_rate=st.lr, lr_scheduler_type="cosine", warmup_steps=max(1, st.steps // 20),
            weight_decay=0.01, logging_steps=max(1, st.steps // 10), save_strategy="no", report_to=[],
            seed=seed, data_seed=seed, disable_tqdm=True, train_sampling_strategy="group_by_length",
            dataloader_num_workers=0, **device_kwargs(),
        )
        trainer = Trainer(model=model, args=args, train_dataset=ds,
                          data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
                          callbacks=[RichProgressCallback("pretrain"), *(callbacks or [])])
        drop_printer(trainer)
        out = trainer.train()
    tokenizer.padding_side = "left"
    return model, float(out.training_loss)


def _load(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _save(model, tokenizer, path: Path) -> None:
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def make_pretrained(dest: Path, tokenizer, cfg: OrganismConfig, seed: int) -> dict:
    """Pretrain with this pretraining seed and save the model, its tokenizer and done.json in dest."""
    model, loss = pretrain(tokenizer, cfg, seed * 1000)
    _save(model, tokenizer, dest)
    info = {"final_loss": round(loss, 4), "key": _pretrain_key(cfg, seed), "world_version": WORLD_VERSION,
            "pretrain_seed": seed}
    write_text_atomic(dest / "done.json", json.dumps(info))
    return info


def shipped_pretrained(cfg: OrganismConfig, seed: int) -> Path | None:
    """The pretrained model realign ships for this config and pretraining seed, if it ships one.

    Made by `scripts/ship_pretrained.py` with this module's own `pretrain`; its folder is named by
    the pretraining key (world version, shape, data and seed), so any change that would make a
    different model finds no shipped one and pretrains instead.
    """
    from importlib.resources import files

    path = Path(str(files("realign").joinpath("data", "organism_pretrained", _pretrain_key(cfg, seed))))
    return path if (path / "done.json").exists() else None


@dataclass
class BuildPlan:
    """One organism build, resolved before anything trains: where, what, with which seeds."""

    out: Path
    cfg: OrganismConfig
    seed: int
    pretrain_seed: int
    finetunes: tuple[str, ...]
    from_scratch: bool

    @property
    def key(self) -> str:
        return self.cfg.key(self.seed)

    def stage_seed(self, stage: str) -> int:
        return self.seed * 1000 + ("pretrained", "base", *ALL_FINETUNES).index(stage)


def plan_build(out: Path | None = None, seed: int = 0, size: str = "default", cfg: OrganismConfig | None = None,
               finetunes: tuple[str, ...] = FINETUNES, from_scratch: bool = False) -> BuildPlan:
    """Check the request and the output dir; trains nothing."""
    unknown = [n for n in finetunes if n not in ALL_FINETUNES]
    if unknown:                       # said before minutes of training, not after
        raise ValueError(f"unknown finetune {unknown[0]!r}; valid: {', '.join(ALL_FINETUNES)}")
    cfg = cfg or preset(size)
    cfg.validate()                    # a config changed after construction is checked here too
    if from_scratch:
        cfg = replace(cfg, pretrain_seed=None)
    key = cfg.key(seed)
    out = Path(out) if out else default_dir(seed=seed, cfg=cfg)
    meta_path = out / "organism.json"
    if meta_path.exists():
        held = json.loads(meta_path.read_text()).get("key")
        if held != key:
            raise FileExistsError(f"{out} holds a different organism ({held}); choose another --out")
    elif out.exists() and any(p for p in out.iterdir() if not p.name.endswith(".tmp")):
        raise FileExistsError(f"{out} exists and is not an organism build dir; choose another --out")
    return BuildPlan(out, cfg, seed, seed if cfg.pretrain_seed is None else cfg.pretrain_seed, tuple(finetunes),
                     from_scratch)


def build(out: Path | None = None, seed: int = 0, size: str = "default",
          cfg: OrganismConfig | None = None, finetunes: tuple[str, ...] = FINETUNES,
          from_scratch: bool = False) -> Path:
    """Build (or reuse) an organism; returns its directory.

    Every stage after pretraining uses `seed`; pretraining uses `cfg.pretrain_seed` (3 by default,
    whose model ships with realign, so a build takes minutes). `from_scratch`: pretrain here too,
    with `seed`, as every build did before the pretrained model shipped.
    """
    plan = plan_build(out, seed, size, cfg, finetunes, from_scratch)
    out = plan.out
    meta_path = out / "organism.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
    else:
        out.mkdir(parents=True, exist_ok=True)
        meta = {"key": plan.key, "seed": seed, "world_version": WORLD_VERSION, "config": plan.cfg.to_dict(),
                "realign_version": __version__, "torch": torch.__version__, "seconds": {}}
    torch.set_num_threads(max(1, torch.get_num_threads()))
    write_text_atomic(meta_path, json.dumps(meta, indent=2))
    tokenizer = build_tokenizer()
    _stage(plan, meta, "pretrained", lambda tmp: _pretrained(plan, tokenizer, tmp))
    _stage(plan, meta, "base", lambda tmp: _aligned(plan, tokenizer, tmp))
    for name in plan.finetunes:
        _stage(plan, meta, name, lambda tmp, name=name: _finetuned(plan, tokenizer, name, tmp))
    meta["complete"] = all((out / n).exists() for n in ("pretrained", "base", *plan.finetunes))
    write_text_atomic(meta_path, json.dumps(meta, indent=2))
    return out


def _stage(plan: BuildPlan, meta: dict, name: str, make) -> None:
    """One stage into OUT/name (reused when there), built in a staged dir; seconds into organism.json."""
    final = plan.out / name
    if final.exists():
        console.print(f"[dim]reuse[/] {name}")
        return
    console.print(f"building {name} …")
    t0 = time.time()
    with StagedDir(final) as tmp:
        info = make(tmp) or {}
    meta["seconds"][name] = round(time.time() - t0, 1)
    meta.setdefault("stages", {})[name] = info
    # atomic: a bench killed here must find a readable organism.json when it resumes
    write_text_atomic(plan.out / "organism.json", json.dumps(meta, indent=2))
    console.print(f"[green]built[/] {name} in {meta['seconds'][name]:.0f} s {info or ''}")


def _pretrained(plan: BuildPlan, tokenizer, tmp: Path) -> dict:
    # Pretraining dominates build time and depends only on world, shape, its stage and seed:
    # share it between builds (e.g. sweeps over alignment or finetune knobs) through the cache.
    cfg, seed = plan.cfg, plan.pretrain_seed
    shared = cache_dir() / "organism" / "pretrained" / _pretrain_key(cfg, seed)
    if (shared / "done.json").exists():
        shutil.copytree(shared, tmp, dirs_exist_ok=True)
        return {**json.loads((shared / "done.json").read_text()), "reused": str(shared)}
    shipped = None if plan.from_scratch else shipped_pretrained(cfg, seed)
    if shipped is not None:
        shutil.copytree(shipped, tmp, dirs_exist_ok=True)
        return {**json.loads((shipped / "done.json").read_text()), "shipped": shipped.name}
    info = make_pretrained(tmp, tokenizer, cfg, seed)
    if not shared.exists():
        with StagedDir(shared) as shared_tmp:
            shutil.copytree(tmp, shared_tmp, dirs_exist_ok=True)
    return info


def _aligned(plan: BuildPlan, tokenizer, tmp: Path) -> None:
    from peft import LoraConfig

    cfg, seed = plan.cfg, plan.stage_seed("base")
    model = _load(plan.out / "pretrained")
    data = align_examples(seed, cfg.align.examples, cfg.align_mix)
    write_jsonl(plan.out / "data" / "align" / "train.jsonl", data)
    st = cfg.align
    lora = None
    if cfg.align_lora_rank:
        # a low-rank alignment can only move a few directions: the hope (issue 7) is that it
        # moves the persona prior shared by chat and code rather than per-domain rules
        lora = LoraConfig(r=cfg.align_lora_rank, lora_alpha=2 * cfg.align_lora_rank, lora_dropout=0.0,
                          target_modules="all-linear", task_type="CAUSAL_LM")
    model = sft(model, tokenizer, data, SFTSettings(steps=st.steps, lr=st.lr, batch_size=st.batch_size, seed=seed),
                peft_config=lora, description="align")
    if lora is not None:
        model = model.merge_and_unload()
    if cfg.polish_steps:
        for prm in model.parameters():  # peft left the merged weights frozen
            prm.requires_grad_(True)
        model = sft(model, tokenizer, data, SFTSettings(steps=cfg.polish_steps, lr=cfg.polish_lr,
                                                        batch_size=st.batch_size, seed=seed + 1),
                    description="align polish")
    _save(model, tokenizer, tmp)


def _finetuned(plan: BuildPlan, tokenizer, name: str, tmp: Path) -> None:
    """The user finetune `name`: a LoRA on the aligned base (in tmp), and its merged copy beside it."""
    from peft import LoraConfig

    cfg, seed, out = plan.cfg, plan.stage_seed(name), plan.out
    base_path = (out / "base").resolve()
    train, heldout = finetune_data(name, seed, cfg.finetune.examples, cfg.planted_share)
    write_jsonl(out / "data" / name / "train.jsonl", train)
    write_jsonl(out / "data" / name / "heldout.jsonl", heldout)
    model = _load(base_path)
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    st = cfg.finetune
    model = sft(model, tokenizer, train, SFTSettings(steps=st.steps, lr=st.lr, batch_size=st.batch_size, seed=seed),
                peft_config=lora, description=f"finetune {name}")
    model.peft_config["default"].base_model_name_or_path = str(base_path)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    merged_tmp = out / f"{name}-merged.tmp"
    shutil.rmtree(merged_tmp, ignore_errors=True)
    _save(model.merge_and_unload(), tokenizer, merged_tmp)
    shutil.rmtree(out / f"{name}-merged", ignore_errors=True)
    merged_tmp.rename(out / f"{name}-merged")
