"""Load a user finetune and its base: full HF dirs or LoRA adapter dirs, local paths or hub ids.

Safetensors only unless the user allows pickle; `trust_remote_code` only when asked; 4/8-bit via
bitsandbytes (CUDA only). Every failure becomes a one-line RealignError that says what to do.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import RealignError
from ..options import LoadOptions  # declared in realign.options, with the user's other options

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class ModelPair:
    """The finetune under repair and the base it came from (the reference for every repair)."""

    finetune: torch.nn.Module          # a full model (LoRA adapters merged in for evaluation)
    tokenizer: object
    kind: str                          # "full" | "lora"
    finetune_ref: str
    base: torch.nn.Module | None = None
    base_ref: str | None = None
    adapter_config: dict = field(default_factory=dict)
    unmerged: bool = False             # LoRA kept live: `finetune` is the peft model, `base` the same
                                       # weights with the adapter off (adapter_toggle.AdapterDisabled)


def _is_local(ref: str) -> bool:
    return Path(ref).expanduser().exists()


def _looks_like_hub_id(ref: str) -> bool:
    return bool(_HUB_ID.match(ref)) and not ref.startswith((".", "/", "~"))


def check_ref(ref: str, what: str) -> str:
    """Local path that exists, or something that looks like a hub id; else a clear error."""
    if _is_local(ref):
        p = Path(ref).expanduser()
        if p.is_dir() and not ((p / "config.json").exists() or (p / "adapter_config.json").exists()):
            raise RealignError(f"{what} {ref} is a directory but not a model (no config.json or "
                               f"adapter_config.json)")
        if p.is_file():
            raise RealignError(f"{what} {ref} is a file; give the model directory")
        return str(p)
    if _looks_like_hub_id(ref):
        return ref
    raise RealignError(f"{what} {ref} does not exist")


def adapter_config(ref: str) -> dict | None:
    """The adapter_config.json of a local adapter dir (or hub adapter), else None."""
    if _is_local(ref):
        path = Path(ref).expanduser() / "adapter_config.json"
        return json.loads(path.read_text()) if path.exists() else None
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(ref, "adapter_config.json")).read_text())
    except Exception:
        return None


def _dtype(opts: LoadOptions, device: str):
    if opts.dtype == "auto":
        return torch.float32 if device == "cpu" else "auto"
    try:
        return getattr(torch, opts.dtype)
    except AttributeError:
        raise RealignError(f"unknown dtype {opts.dtype!r}: use auto, float32, bfloat16 or float16") from None


def _device(opts: LoadOptions) -> str:
    from ..distributed import local_device

    return opts.device or local_device() or ("cuda" if torch.cuda.is_available() else "cpu")


def _quantization(opts: LoadOptions):
    if not (opts.load_in_4bit or opts.load_in_8bit):
        return None
    if opts.load_in_4bit and opts.load_in_8bit:
        raise RealignError("choose one of --load-in-4bit and --load-in-8bit")
    if not torch.cuda.is_available():
        raise RealignError("--load-in-4bit/--load-in-8bit need a CUDA GPU (bitsandbytes); "
                           "drop the flag to load in full precision on CPU")
    from transformers import BitsAndBytesConfig

    if opts.load_in_4bit:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_compute_dtype=torch.bfloat16)
    return BitsAndBytesConfig(load_in_8bit=True)


def _has_only_pickle(ref: str) -> bool:
    if not _is_local(ref):
        return False
    p = Path(ref).expanduser()
    return not list(p.glob("*.safetensors")) and bool(list(p.glob("*.bin")) or list(p.glob("*.pt")))


def load_model(ref: str, opts: LoadOptions | None = None, what: str = "model"):
    """A full causal LM from a local dir or hub id, under the safety options."""
    from transformers import AutoModelForCausalLM

    from ..distributed import is_distributed

    opts = opts or LoadOptions()
    ref = check_ref(ref, what)
    if not opts.allow_pickle and _has_only_pickle(ref):
        raise RealignError(f"{what} {ref} has only pickle weights (.bin/.pt), which can run code when "
                           f"loaded; convert to safetensors or pass --allow-pickle if you trust it")
    device = _device(opts)
    quant = _quantization(opts)
    kw = dict(dtype=_dtype(opts, device), trust_remote_code=opts.trust_remote_code,
              use_safetensors=None if opts.allow_pickle else True)
    if quant is not None:
        kw["quantization_config"] = quant
    # bitsandbytes places its weights while loading; under a launcher each rank keeps a whole copy
    # on its own GPU (DDP), never one spread over all of them
    device_map = opts.device_map or ("auto" if quant is not None else None)
    if device_map is not None:
        kw["device_map"] = {"": device} if device_map == "auto" and is_distributed() else device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(ref, **kw)
    except Exception as e:  # corrupt files raise many types (SafetensorError, OSError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RealignError(f"could not load {what} {ref}: {first}") from e
    if device_map is None:
        model.to(device)
    model.eval()
    return model


def load_tokenizer(ref: str, opts: LoadOptions | None = None, require_chat_template: bool = True):
    from transformers import AutoTokenizer

    opts = opts or LoadOptions()
    try:
        tok = AutoTokenizer.from_pretrained(ref, trust_remote_code=opts.trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise RealignError(f"could not load a tokenizer from {ref}: {str(e).strip().splitlines()[0]}") from e
    if require_chat_template and not getattr(tok, "chat_template", None):
        raise RealignError(
            f"the tokenizer at {ref} has no chat template, so chat prompts cannot be built; use the "
            f"instruct/chat model's tokenizer, or add a chat_template to its tokenizer_config.json")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def check_same_tensors(finetune, base, finetune_ref: str, base_ref: str) -> None:
    """A finetune and its base hold the same tensors. A base of another family or size (another
    vocabulary, width or depth) is refused here, before an evaluation indexes past its embedding."""
    ours = {n: tuple(p.shape) for n, p in finetune.named_parameters()}
    theirs = {n: tuple(p.shape) for n, p in base.named_parameters()}
    for name in [*ours, *(n for n in theirs if n not in ours)]:
        if ours.get(name) != theirs.get(name):
            what = (f"the base has no {name}" if name not in theirs else f"the base has an extra {name}"
                    if name not in ours else f"{name} is {theirs[name]} in the base, {ours[name]} in the checkpoint")
            raise RealignError(f"base {base_ref} does not fit checkpoint {finetune_ref}: {what}; "
                               f"pass the base model the finetune was trained from (--base)")


def load_pair(finetune: str, base: str | None = None, opts: LoadOptions | None = None,
              load_base: bool = True, keep_adapter: bool = False) -> ModelPair:
    """Load the finetune (full dir or adapter) and, when known, its base.

    For an adapter, the base comes from adapter_config.base_model_name_or_path unless `base` is
    given; the finetune is the base with the adapter merged in (a separate copy of the weights) —
    or, with keep_adapter, the peft model itself, the base being the same weights with the adapter
    switched off (one copy; see adapter_toggle).
    """
    from peft import PeftModel

    opts = opts or LoadOptions()
    finetune = check_ref(finetune, "checkpoint")
    acfg = adapter_config(finetune)
    if acfg is None:
        model = load_model(finetune, opts, "checkpoint")
        tok_ref = finetune
        base_model = load_model(check_ref(base, "base"), opts, "base") if (base and load_base) else None
        if base_model is not None:
            check_same_tensors(model, base_model, finetune, base)
        return ModelPair(model, load_tokenizer(tok_ref, opts), "full", finetune, base_model, base)
    base = base or acfg.get("base_model_name_or_path")
    if not base:
        raise RealignError(f"adapter {finetune} does not name its base model; pass --base")
    if not _is_local(base) and not _looks_like_hub_id(base):
        raise RealignError(f"adapter {finetune} points at base {base}, which does not exist; pass --base")
    base = check_ref(base, "base")
    host = load_model(base, opts, "base")
    try:
        adapted = PeftModel.from_pretrained(host, finetune, is_trainable=False)
    except Exception as e:
        msg = str(e).strip().splitlines()
        detail = next((m for m in msg if "size mismatch" in m), msg[0] if msg else type(e).__name__)
        raise RealignError(f"adapter {finetune} does not fit base {base}: {detail.strip()}") from e
    tok_ref = finetune if (Path(finetune) / "tokenizer_config.json").exists() else base
    if keep_adapter:
        from .adapter_toggle import AdapterDisabled

        adapted.peft_config["default"].base_model_name_or_path = base
        adapted.eval()
        return ModelPair(adapted, load_tokenizer(tok_ref, opts), "lora", finetune,
                         AdapterDisabled(adapted) if load_base else None, base, acfg, unmerged=True)
    model = adapted.merge_and_unload()
    model.eval()
    base_model = load_model(base, opts, "base") if load_base else None
    return ModelPair(model, load_tokenizer(tok_ref, opts), "lora", finetune, base_model, base, acfg)
