"""Where `realign fix` samples text: HF generate on the in-memory model, or vLLM from disk.

A backend is called like `generation.hf.generate` — backend(model, tokenizer, conversations,
samples=…, max_new_tokens=…, temperature=…, top_p=…, seed=…) -> answers[i][j] — by the
evaluations (answers, the organism's task rate) and the repairs' probe generations alike
(`RepairState.sample`).

vLLM reads weights from disk, so the vLLM backend keeps, for each model object, where its
weights are: the base and the finetune as the user gave them (a LoRA finetune as base + adapter,
served by one engine with LoRARequest); any other model — the repaired one, or the finetune once a
step changed it in place — is saved once (safetensors) to a scratch dir next to --out. One engine
lives at a time and is shut down before another starts and whenever a caller is done sampling,
so that training and scoring get the GPU back.
"""

from __future__ import annotations

import shutil
import weakref
from pathlib import Path

from ..errors import RealignError

BACKENDS = ("hf", "vllm")


class HFBackend:
    """transformers generate on the model in memory (batched, left-padded)."""

    name = "hf"

    def __call__(self, model, tokenizer, conversations, **kw) -> list[list[str]]:
        from .hf import generate

        return generate(model, tokenizer, conversations, **kw)

    def for_model(self, model, tokenizer):
        """`evaluate`'s generator argument: None keeps its own batched HF generate."""
        return None

    def register(self, model, ref: str, adapter: str | None = None) -> None:
        pass

    def forget(self, model) -> None:
        pass

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


class VLLMBackend:
    """vLLM engines on the models' weights on disk; see the module docstring."""

    name = "vllm"

    def __init__(self, scratch: Path, *, seed: int = 0, trust_remote_code: bool = False, dtype: str = "auto",
                 quantize_on_load: bool = False) -> None:
        self.scratch = Path(scratch)
        self.seed, self.trust_remote_code, self.dtype = seed, trust_remote_code, dtype
        # --load-in-4bit: vLLM quantizes the user's checkpoints in flight with bitsandbytes too;
        # a saved bnb model carries its quantization_config, which vLLM reads by itself
        self.quantize_on_load = quantize_on_load
        self._sources: dict[int, tuple[weakref.ref, str, str | None, bool]] = {}
        self._engine = None
        self._engine_key: tuple | None = None
        self._saved = 0
        # the scratch copies can be as large as the model: gone at exit even when the run fails
        weakref.finalize(self, shutil.rmtree, str(self.scratch), True)

    # --- which weights on disk a model object stands for
    def register(self, model, ref: str, adapter: str | None = None) -> None:
        """`model` holds exactly the weights at `ref` (plus `adapter`), until forgotten."""
        self._sources[id(model)] = (weakref.ref(model), ref, adapter, False)

    def forget(self, model) -> None:
        """`model` was changed in place: its weights on disk no longer match (a scratch copy is deleted)."""
        entry = self._sources.pop(id(model), None)
        if entry is not None and entry[3]:
            if self._engine_key and self._engine_key[0] == entry[1]:
                self.release()
            shutil.rmtree(entry[1], ignore_errors=True)

    def _source(self, model, tokenizer) -> tuple[str, str | None, bool]:
        entry = self._sources.get(id(model))
        if entry is not None and entry[0]() is model:
            return entry[1], entry[2], entry[3]
        if entry is not None and entry[3]:          # a dead model's id reused: its copy goes
            shutil.rmtree(entry[1], ignore_errors=True)
        self._saved += 1
        path = self.scratch / f"model-{self._saved}"
        path.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
        self._sources[id(model)] = (weakref.ref(model), str(path), None, True)
        return str(path), None, True

    def _lora_rank(self, ref: str) -> int | None:
        """The largest adapter rank served on `ref`, so one engine serves the base and its adapters."""
        from ..model_io.checkpoint import adapter_config

        ranks = [int((adapter_config(a) or {}).get("r", 64))
                 for w, r, a, _ in self._sources.values() if r == ref and a and w() is not None]
        return max(ranks) if ranks else None

    def _engine_for(self, ref: str, scratch: bool, tokenizer):
        from .vllm_engine import VLLMEngine

        quantization = "bitsandbytes" if self.quantize_on_load and not scratch else None
        key = (ref, quantization)
        if self._engine_key != key:
            self.release()
            self._engine = VLLMEngine(ref, tokenizer, seed=self.seed, trust_remote_code=self.trust_remote_code,
                                      lora_rank=self._lora_rank(ref), quantization=quantization,
                                      dtype="auto" if scratch else self.dtype)
            self._engine_key = key
        return self._engine

    # --- sampling
    def __call__(self, model, tokenizer, conversations, *, samples: int = 1, max_new_tokens: int = 64,
                 temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, **_) -> list[list[str]]:
        ref, adapter, scratch = self._source(model, tokenizer)
        engine = self._engine_for(ref, scratch, tokenizer)
        return engine.generate(conversations, adapter_ref=adapter, samples=samples, max_new_tokens=max_new_tokens,
                               temperature=temperature, top_p=top_p, seed=seed)

    def for_model(self, model, tokenizer):
        return lambda conversations, **kw: self(model, tokenizer, conversations, **kw)

    def release(self) -> None:
        """Shut the live engine down (if any), giving its GPU memory back."""
        if self._engine is not None:
            self._engine.close()
        self._engine, self._engine_key = None, None

    def close(self) -> None:
        self.release()
        shutil.rmtree(self.scratch, ignore_errors=True)
        self._sources.clear()


def make_backend(name: str, scratch: Path, *, seed: int = 0, trust_remote_code: bool = False,
                 dtype: str = "auto", quantize_on_load: bool = False):
    """The named backend, or a one-line RealignError saying why it cannot run here."""
    if name not in BACKENDS:
        raise RealignError(f"--backend must be one of {', '.join(BACKENDS)}, not {name!r}")
    if name == "hf":
        return HFBackend()
    from .vllm_engine import vllm_unavailable

    reason = vllm_unavailable()
    if reason:
        raise RealignError(reason)
    return VLLMBackend(scratch, seed=seed, trust_remote_code=trust_remote_code, dtype=dtype,
                       quantize_on_load=quantize_on_load)
