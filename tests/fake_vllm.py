"""A stand-in for the `vllm` package (which needs CUDA): the same entry points realign uses.

`install(monkeypatch)` puts fake `vllm`, `vllm.lora.request` and `vllm.distributed` modules in
sys.modules. Its LLM loads the model from disk as vLLM would (a dir: it never sees the caller's
in-memory objects), applies a LoRARequest's adapter, and samples with transformers generate inside
a flag; every other transformers generate call in the process fails, so a test sees any generation
that bypassed the backend. It records engines and calls, and how many engines are alive.
"""

from __future__ import annotations

import importlib.machinery
import sys
import threading
import types
import weakref
from dataclasses import dataclass, field

import torch


@dataclass
class Record:
    engines: list[dict] = field(default_factory=list)        # LLM(...) keyword arguments, in order
    calls: list[tuple[str, str | None, int]] = field(default_factory=list)   # (model, adapter, prompts)
    live: int = 0
    most_live: int = 0
    cleanups: int = 0
    bypassed: list[str] = field(default_factory=list)        # generations that did not go through LLM


_inside = threading.local()


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    seed: int | None = None
    stop_token_ids: list[int] | None = None


@dataclass
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


def install(monkeypatch) -> Record:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationMixin

    record = Record()
    original_generate = GenerationMixin.generate

    def guarded_generate(self, *args, **kw):
        if not getattr(_inside, "flag", False):
            record.bypassed.append(type(self).__name__)
            raise AssertionError("a generation bypassed the vllm backend")
        return original_generate(self, *args, **kw)

    monkeypatch.setattr(GenerationMixin, "generate", guarded_generate)

    class LLM:
        def __init__(self, model: str, **kw) -> None:
            record.engines.append({"model": model, **kw})
            self.model_ref = model
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
            self.adapted: dict[str, torch.nn.Module] = {}
            self.enable_lora = kw.get("enable_lora", False)
            record.live += 1
            record.most_live = max(record.most_live, record.live)
            weakref.finalize(self, _gone, record)

        def _model(self, lora: LoRARequest | None):
            if lora is None:
                return self.base
            assert self.enable_lora, "a LoRARequest on an engine started without enable_lora"
            if lora.lora_path not in self.adapted:
                import copy

                from peft import PeftModel

                host = copy.deepcopy(self.base)
                self.adapted[lora.lora_path] = PeftModel.from_pretrained(host, lora.lora_path).merge_and_unload().eval()
            return self.adapted[lora.lora_path]

        def generate(self, prompts: list[str], params: SamplingParams, lora_request: LoRARequest | None = None):
            record.calls.append((self.model_ref, lora_request.lora_path if lora_request else None, len(prompts)))
            model = self._model(lora_request)
            tok = self.tokenizer
            tok.padding_side = "left"
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            torch.manual_seed(params.seed or 0)
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            sampling = dict(do_sample=True, temperature=params.temperature, top_p=params.top_p) \
                if params.temperature > 0 else dict(do_sample=False)
            _inside.flag = True
            try:
                out = model.generate(**enc, max_new_tokens=params.max_tokens, num_return_sequences=params.n,
                                     pad_token_id=tok.pad_token_id, eos_token_id=params.stop_token_ids or None,
                                     **sampling)
            finally:
                _inside.flag = False
            texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text=t)
                                                   for t in texts[i * params.n:(i + 1) * params.n]])
                    for i in range(len(prompts))]

    def cleanup_dist_env_and_memory() -> None:
        record.cleanups += 1

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, SamplingParams
    lora_pkg, lora_request = types.ModuleType("vllm.lora"), types.ModuleType("vllm.lora.request")
    lora_request.LoRARequest = LoRARequest
    lora_pkg.request = lora_request
    distributed = types.ModuleType("vllm.distributed")
    distributed.cleanup_dist_env_and_memory = cleanup_dist_env_and_memory
    vllm.lora, vllm.distributed = lora_pkg, distributed
    for name, module in (("vllm", vllm), ("vllm.lora", lora_pkg), ("vllm.lora.request", lora_request),
                         ("vllm.distributed", distributed)):
        # a spec, so that importlib.util.find_spec works; with no version and no file, transformers
        # and trl take it for a namespace package, not an installed vllm, and leave it alone
        module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
        monkeypatch.setitem(sys.modules, name, module)
    return record


def _gone(record: Record) -> None:
    record.live -= 1
