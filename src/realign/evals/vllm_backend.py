"""vLLM generation backend (optional: `pip install "realign[vllm]"`, needs a CUDA GPU).

Same contract as `generate.generate`: answers[i][j] for conversation i, sample j. LoRA adapters
are served with vLLM's LoRARequest on top of the base, so nothing is merged on disk.
"""

from __future__ import annotations

from ..errors import RealignError
from .generate import render_prompts, stop_token_ids


class VLLMGenerator:
    def __init__(self, model_ref: str, tokenizer, adapter_ref: str | None = None, seed: int = 0,
                 trust_remote_code: bool = False, max_lora_rank: int = 64) -> None:
        try:
            from vllm import LLM
        except ImportError:
            raise RealignError('the vllm backend needs vLLM: pip install "realign[vllm]" (CUDA GPU only); '
                               "or use --backend hf") from None
        self.tokenizer, self.adapter_ref = tokenizer, adapter_ref
        self.llm = LLM(model=model_ref, seed=seed, trust_remote_code=trust_remote_code,
                       enable_lora=adapter_ref is not None, max_lora_rank=max_lora_rank)
        # vLLM reads generation_config itself; the union with the tokenizer's eos is made explicit
        # so that both backends stop on exactly the same tokens
        from transformers import GenerationConfig

        try:
            gen_config = GenerationConfig.from_pretrained(model_ref)
        except (OSError, ValueError):
            gen_config = None
        holder = type("Holder", (), {"generation_config": gen_config, "config": None})()
        self.stop_ids = stop_token_ids(holder, tokenizer)

    def __call__(self, conversations, *, samples=1, max_new_tokens=256, temperature=1.0, top_p=1.0,
                 seed=0, **_) -> list[list[str]]:
        from vllm import SamplingParams

        lora = None
        if self.adapter_ref:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest("finetune", 1, self.adapter_ref)
        params = SamplingParams(n=samples, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                seed=seed, stop_token_ids=self.stop_ids)
        outs = self.llm.generate(render_prompts(self.tokenizer, conversations), params, lora_request=lora)
        return [[o.text.strip() for o in out.outputs] for out in outs]
