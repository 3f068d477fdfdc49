"""vLLM generation backend (optional: `pip install "realign[vllm]"`, needs a CUDA GPU).

Same contract as `generate.generate`: answers[i][j] for conversation i, sample j. vLLM reads a
model from disk (a local dir or hub id); LoRA adapters are served per request with LoRARequest on
top of their base, so nothing is merged on disk and one engine serves a base and its adapters.
"""

from __future__ import annotations

import contextlib
import gc

import torch

from ..errors import RealignError
from .hf import render_prompts, stop_token_ids

# ranks vLLM accepts for max_lora_rank
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def cuda_available() -> bool:
    return torch.cuda.is_available()


def vllm_unavailable() -> str | None:
    """Why the vllm backend cannot run here (one line), or None when it can."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        return 'the vllm backend needs vLLM: pip install "realign[vllm]" (CUDA GPU only); or use --backend hf'
    if not cuda_available():
        return "the vllm backend needs a CUDA GPU and none is visible; use --backend hf"
    return None


def lora_rank_bound(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds an adapter of this rank."""
    for r in LORA_RANKS:
        if r >= rank:
            return r
    raise RealignError(f"a LoRA adapter of rank {rank} is above vLLM's largest max_lora_rank ({LORA_RANKS[-1]})")


def _free_memory_share() -> float | None:
    """vLLM claims gpu_memory_utilization × total memory and refuses to start when that is not
    free; models realign holds on the same GPU leave less, so ask for 90% of what is free."""
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return round(0.9 * free / total, 3)


class VLLMEngine:
    """One vLLM engine on one model (dir or hub id); adapters are chosen per call."""

    def __init__(self, model_ref: str, tokenizer, *, seed: int = 0, trust_remote_code: bool = False,
                 lora_rank: int | None = None, quantization: str | None = None, dtype: str = "auto") -> None:
        try:
            from vllm import LLM
        except ImportError:
            raise RealignError('the vllm backend needs vLLM: pip install "realign[vllm]" (CUDA GPU only); '
                               "or use --backend hf") from None
        self.model_ref, self.tokenizer = model_ref, tokenizer
        kw = {"enable_lora": lora_rank is not None}
        if lora_rank is not None:
            kw.update(max_lora_rank=lora_rank_bound(lora_rank), max_loras=1)
        if quantization:
            kw["quantization"] = quantization
        share = _free_memory_share()
        if share is not None:
            kw["gpu_memory_utilization"] = share
        self.llm = LLM(model=model_ref, seed=seed, trust_remote_code=trust_remote_code, dtype=dtype, **kw)
        self._lora_ids: dict[str, int] = {}
        # vLLM reads generation_config itself; the union with the tokenizer's eos is made explicit
        # so that both backends stop on exactly the same tokens
        from transformers import GenerationConfig

        try:
            gen_config = GenerationConfig.from_pretrained(model_ref)
        except (OSError, ValueError):
            gen_config = None
        holder = type("Holder", (), {"generation_config": gen_config, "config": None})()
        self.stop_ids = stop_token_ids(holder, tokenizer)

    def generate(self, conversations, *, adapter_ref: str | None = None, samples=1, max_new_tokens=256,
                 temperature=1.0, top_p=1.0, seed=0) -> list[list[str]]:
        from vllm import SamplingParams

        lora = None
        if adapter_ref:
            from vllm.lora.request import LoRARequest

            lora_id = self._lora_ids.setdefault(adapter_ref, len(self._lora_ids) + 1)
            lora = LoRARequest(f"adapter{lora_id}", lora_id, adapter_ref)
        params = SamplingParams(n=samples, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                seed=seed, stop_token_ids=self.stop_ids)
        outs = self.llm.generate(render_prompts(self.tokenizer, conversations), params, lora_request=lora)
        return [[o.text.strip() for o in out.outputs] for out in outs]

    def close(self) -> None:
        """Shut the engine down and give its GPU memory back (its weights and KV cache)."""
        if self.llm is None:
            return
        self.llm = None
        gc.collect()
        with contextlib.suppress(ImportError):
            from vllm.distributed import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
