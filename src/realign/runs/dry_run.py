"""`realign fix --dry-run`: the cost model's prediction (realign.cost) for the user's model and
recipe, from the model's config.json alone — no weights are loaded and nothing is written."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..cost import FITS_LEGEND, ModelShape, Prediction, Setting, predict, render_prediction
from ..errors import RealignError

PLANNED_GPUS = (1, 8)


@dataclass(frozen=True)
class DryRun:
    recipe: str
    config_from: str            # the model dir or hub id whose config.json was read
    model: ModelShape
    predictions: tuple[Prediction, ...]


def predict_fix(checkpoint: str, base: str | None, recipe_spec: str, overrides: list[str], opts) -> DryRun:
    """The recipe resolved as `fix` would, the model's shape from its config, a prediction per
    setting (CPU, 1 and 8 GPUs, and the GPUs visible here). Bad input is a RealignError."""
    from ..recipe import load_recipe
    from .fix import check_gpu_options

    recipe = load_recipe(recipe_spec, overrides)
    check_gpu_options(recipe, opts)
    cfg, source = model_config(checkpoint, base)
    try:
        shape = ModelShape.from_config(cfg)
        preds = tuple(predict(recipe.resolved(), shape, s) for s in settings(opts.load, shape))
    except ValueError as e:
        raise RealignError(f"cannot predict the cost of {source}: {e}") from None
    return DryRun(recipe.name, source, shape, preds)


def model_config(checkpoint: str, base: str | None) -> tuple[dict, str]:
    """(config.json, where from): the finetune's, else its base's (--base, or the adapter's base).
    A local dir is read; for a hub id only config.json is fetched."""
    from ..model_io.checkpoint import adapter_config, check_ref

    refs = [check_ref(checkpoint, "checkpoint")]
    if base:
        refs.append(check_ref(base, "base"))
    else:
        acfg = adapter_config(refs[0]) or {}
        if acfg.get("base_model_name_or_path"):
            refs.append(acfg["base_model_name_or_path"])
    for ref in refs:
        cfg = _read_config(ref)
        if cfg is not None:
            return cfg, ref
    raise RealignError(f"no config.json found for {checkpoint}" + (f" or its base {refs[-1]}" if len(refs) > 1 else "")
                       + "; pass --base with the model the finetune was trained from")


def _read_config(ref: str) -> dict | None:
    path = Path(ref).expanduser() / "config.json"
    if Path(ref).expanduser().exists():
        if not path.exists():
            return None
        text = path.read_text(encoding="utf-8")
    else:
        try:
            from huggingface_hub import hf_hub_download

            text = Path(hf_hub_download(ref, "config.json")).read_text(encoding="utf-8")
        except Exception:
            return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RealignError(f"{ref}: config.json is not valid JSON ({e.msg}, line {e.lineno})") from None


def settings(load, shape: ModelShape) -> list[Setting]:
    """Where to predict: the CPU (not for 4/8-bit), 1 and 8 GPUs and the GPUs visible here, each in
    the dtype fix would load (--dtype auto: float32 on a CPU, the config's dtype on a GPU)."""
    import torch

    quant = "4bit" if load.load_in_4bit else "8bit" if load.load_in_8bit else None
    gpu_dtype = quant or (shape.dtype if load.dtype == "auto" else load.dtype)
    out = [] if quant else [Setting("cpu", 0, "float32" if load.dtype == "auto" else load.dtype)]
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return out + [Setting("gpu", n, gpu_dtype) for n in sorted({*PLANNED_GPUS, visible} - {0})]


def describe(dry: DryRun) -> str:
    """What `fix --dry-run` prints: the model, the table, the layout per GPU setting, the notes."""
    m = dry.model
    lines = [f"realign fix --dry-run: recipe {dry.recipe} on {m.name} from {dry.config_from} "
             f"({m.params / 1e9:.3g}B parameters, {m.layers} layers, hidden {m.hidden}, vocabulary {m.vocab:,}) "
             f"— config.json only, no weights loaded, nothing written", "",
             render_prediction(list(dry.predictions)), "",
             f"peak: per device, low–high (docs/cost.md); {FITS_LEGEND}."]
    for p in dry.predictions:
        lines.append(f"{p.setting.label()} ({p.setting.dtype}): {p.layout}")
    notes = dict.fromkeys(n for p in dry.predictions for n in p.notes)
    return "\n".join(lines + ["", "measured vs assumed:"] + [f"- {n}" for n in notes])
