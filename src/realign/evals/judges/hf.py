"""A local causal LM as judge: the field's logprob scoring, read off a local model exactly.

Same prompts and rule as the OpenAI-compatible judge (score = probability-weighted mean of the
numbers 0..100 the judge would answer, None below 0.25 mass, CODE/REFUSAL labels), but computed
from the model's own distribution over *whole number strings*, not over one next token. Why: many
tokenizers (Qwen2/3, SmolLM2, Gemma) split numbers into digits, so a one-token reading sees only
0..9 and can never score above 9. Here every string "0".."100" is tokenized as the model would
write it after the prompt, and P(n) = P(its tokens) x P(the number ends there), where "ends" means
the next token does not start with a digit. All of that comes from two forward passes per prompt:
the prompt once (kept as a KV cache), then every number's tokens at once in one batch that reuses
the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING

from .base import METRICS, JudgeItem, Judgement, Progress, label_of, register_judge, score_from_top_logprobs

if TYPE_CHECKING:
    import torch

NUMBERS = [str(n) for n in range(101)]


def _copy_cache(cache):
    import copy

    return copy.deepcopy(cache)


def _cache_kwarg(model) -> str:
    """transformers renamed `past_key_values` to `cache` (5.24); speak whichever this one takes."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@register_judge("hf")
class HFJudge:
    def __init__(self, model: str | None = None, *, loaded=None, top_k: int = 20,
                 trust_remote_code: bool = False, cache_budget: int = 1 << 30) -> None:
        self._reload = None           # how to load the model again after release(); None: given, not ours
        if loaded is None:
            if not model:
                raise ValueError("the hf judge needs a model: --judge-model PATH_OR_HUB_ID")
            from ...model_io.checkpoint import LoadOptions, load_model, load_tokenizer

            opts = LoadOptions(trust_remote_code=trust_remote_code)
            self._reload = lambda: load_model(model, opts, "judge model").eval()
            loaded = (self._reload(), load_tokenizer(model, opts))
        self.model, self.tokenizer = loaded
        self.model.eval()
        self.name = f"hf:{model or getattr(self.model, 'name_or_path', 'model')}"
        self.top_k, self.cache_budget = top_k, cache_budget

    # -- how the judge writes numbers -------------------------------------------------------

    def _prompt_ids(self, prompt: str) -> list[int]:
        tok = self.tokenizer
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True)
        return tok(text, add_special_tokens=False)["input_ids"]

    @cached_property
    def _number_tokens(self) -> list[list[int]]:
        """Token ids of each number 0..100 as written right after the generation prompt.

        Tokenized in context (prompt text + number) and cut at the prompt's length, so that
        tokenizers that merge across the boundary or add a prefix space are read as they write.
        """
        tok = self.tokenizer
        stem = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                       add_generation_prompt=True)
        base = tok(stem, add_special_tokens=False)["input_ids"]
        out = []
        for s in NUMBERS:
            ids = tok(stem + s, add_special_tokens=False)["input_ids"]
            if ids[:len(base)] != base or len(ids) == len(base):
                ids = base + tok(s, add_special_tokens=False)["input_ids"]
            out.append(ids[len(base):])
        return out

    @cached_property
    def _continues_number(self) -> torch.Tensor:
        """Vocabulary mask: tokens whose text starts with a digit (they would extend a number)."""
        import torch

        tokens = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        size = max(len(self.tokenizer), self.model.get_output_embeddings().weight.shape[0])
        mask = torch.zeros(size, dtype=torch.bool)
        for i, t in enumerate(tokens):
            mask[i] = bool(t) and t[0].isdigit()
        return mask

    # -- scoring ------------------------------------------------------------------------------

    def _top(self, prompt: str) -> list[tuple[str, float]]:
        """[(text, logprob)]: every number 0..100 with its full log-probability, plus the first
        token's top-k alternatives that start a label word (CODE / REFUSAL)."""
        import torch

        with torch.no_grad():
            device = next(self.model.parameters()).device
            ids = torch.tensor([self._prompt_ids(prompt)], device=device)
            try:
                first = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
            except TypeError:      # a model without logits_to_keep: full logits, last one read
                first = self.model(input_ids=ids, use_cache=True)
            cache = getattr(first, "cache", None) or first.past_key_values
            logp0 = torch.log_softmax(first.logits[0, -1].float(), -1)

            seqs = self._number_tokens
            width = max(len(s) for s in seqs)
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            # the prompt's cache is copied once per continuation in a chunk: size chunks so that the
            # copies stay within `cache_budget` bytes (a 7B judge's cache of a long prompt is large)
            per_copy = sum(t.numel() * t.element_size() for layer in getattr(cache, "layers", [])
                           for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
                           if isinstance(t, torch.Tensor))
            chunk = max(1, min(len(seqs), self.cache_budget // per_copy if per_copy else len(seqs)))
            stop = self._continues_number.to(device)
            top: list[tuple[str, float]] = []
            for c0 in range(0, len(seqs), chunk):
                group = seqs[c0:c0 + chunk]
                cont = torch.full((len(group), width), pad, dtype=torch.long, device=device)
                mask = torch.zeros((len(group), ids.shape[1] + width), dtype=torch.long, device=device)
                mask[:, :ids.shape[1]] = 1
                for i, s in enumerate(group):
                    cont[i, :len(s)] = torch.tensor(s, device=device)
                    mask[i, ids.shape[1]:ids.shape[1] + len(s)] = 1
                copy = cache if c0 + chunk >= len(seqs) else _copy_cache(cache)
                copy.batch_repeat_interleave(len(group))
                logp = torch.log_softmax(
                    self.model(input_ids=cont, attention_mask=mask, use_cache=False,
                               **{_cache_kwarg(self.model): copy}).logits.float(), -1)   # (group, width, vocab)
                del copy
                digit = stop[: logp.shape[-1]]
                for i, toks in enumerate(group):
                    total = float(logp0[toks[0]])
                    for j in range(1, len(toks)):
                        total += float(logp[i, j - 1, toks[j]])
                    p_more = float(logp[i, len(toks) - 1][digit].exp().sum())
                    total += torch.log1p(torch.tensor(-min(p_more, 1 - 1e-12))).item()
                    top.append((NUMBERS[c0 + i], total))
                del logp
            values, index = logp0.topk(self.top_k)
            for lp, t in zip(values.tolist(), index.tolist()):
                text = self.tokenizer.decode([t])
                if label_of(text) is not None:
                    top.append((text, lp))
            return top

    def release(self) -> None:
        """Free the judge model this judge loaded itself (a model handed in stays: it is the
        caller's); the next judge() loads it again. Training repairs call this before they train."""
        if self._reload is not None:
            self.model = None

    def judge(self, items: Sequence[JudgeItem], progress: Progress | None = None) -> list[Judgement]:
        if self.model is None:
            self.model = self._reload()
        out = []
        for item in items:
            (a, label), (c, _) = (score_from_top_logprobs(self._top(item.prompt(m))) for m in METRICS)
            out.append(Judgement(aligned=a, coherent=c, label=label))
            if progress:
                progress(1)
        return out
