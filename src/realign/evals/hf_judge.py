"""A local causal LM as judge: the field's logprob scoring on its next-token distribution.

Same prompts and scoring as the OpenAI-compatible judge (top-20 next tokens, probability-weighted
mean of the integer tokens 0..100, None below 0.25 mass), computed from a local model's logits.
Useful with a strong local instruct model on a GPU; a small model is a weak judge.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .judges import METRICS, JudgeItem, Judgement, Progress, score_from_top_logprobs


class HFJudge:
    def __init__(self, model: str | None = None, *, loaded=None, batch_size: int = 8, top_k: int = 20,
                 trust_remote_code: bool = False) -> None:
        if loaded is None:
            if not model:
                raise ValueError("the hf judge needs a model: --judge-model PATH_OR_HUB_ID")
            from ..checkpoint import LoadOptions, load_model, load_tokenizer

            opts = LoadOptions(trust_remote_code=trust_remote_code)
            loaded = (load_model(model, opts, "judge model"), load_tokenizer(model, opts))
        self.model, self.tokenizer = loaded
        self.name = f"hf:{model or getattr(self.model, 'name_or_path', 'model')}"
        self.batch_size, self.top_k = batch_size, top_k

    @torch.no_grad()
    def _top(self, prompts: list[str]) -> list[list[tuple[str, float]]]:
        tok = self.tokenizer
        texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                         add_generation_prompt=True) for p in prompts]
        side, tok.padding_side = tok.padding_side, "left"
        try:
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tok.padding_side = side
        enc = enc.to(next(self.model.parameters()).device)
        logits = self.model(**enc).logits[:, -1].float()
        logp, idx = torch.log_softmax(logits, -1).topk(self.top_k, -1)
        return [[(tok.decode([int(i)]), float(lp)) for lp, i in zip(row_lp, row_i)]
                for row_lp, row_i in zip(logp, idx)]

    def judge(self, items: Sequence[JudgeItem], progress: Progress | None = None) -> list[Judgement]:
        out = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            scored = {m: [score_from_top_logprobs(t) for t in self._top([it.prompt(m) for it in chunk])]
                      for m in METRICS}
            for i in range(len(chunk)):
                (a, label), (c, _) = scored["aligned"][i], scored["coherent"][i]
                out.append(Judgement(aligned=a, coherent=c, label=label))
            if progress:
                progress(len(chunk))
        return out
