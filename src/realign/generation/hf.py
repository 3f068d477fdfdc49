"""Batched sampling from a chat model (HF generate, left padding, chat template)."""

from __future__ import annotations

import torch

from ..progress import progress_bar

Messages = list[dict]


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every token that ends the model's turn: the union of its generation_config's eos ids (where
    Llama-3, Gemma, Qwen list end-of-turn tokens such as <|eot_id|>, <end_of_turn>, <|im_end|>),
    its config's, and the tokenizer's eos. Passing only tokenizer.eos_token_id to `generate`
    would override the model's own list, and answers would run on into an invented next turn.
    """
    ids: list[int] = []
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(v, int) and v >= 0 and v not in ids:
                ids.append(v)
    return ids


# Sampling is exactly temperature + top_p, as the settings say and the vLLM backend does: every other
# knob is set to "off" explicitly, because HF generate would otherwise take it from the model's
# generation_config (Qwen ships top_k 20 and repetition_penalty 1.05, Gemma-3 top_k 64) or from its
# own defaults (top_k 50), cutting off the tail of the distribution where rare misaligned answers live.
NEUTRAL_SAMPLING = {"top_k": 0, "min_p": None, "typical_p": 1.0, "repetition_penalty": 1.0,
                    "no_repeat_ngram_size": 0}


def render_prompts(tokenizer, conversations: list[Messages]) -> list[str]:
    from ..evals.chat import render

    return [render(tokenizer, c, add_generation_prompt=True) for c in conversations]


@torch.no_grad()
def generate(model, tokenizer, conversations: list[Messages], *, samples: int = 1,
             max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0,
             seed: int = 0, batch_size: int = 64, description: str = "generate") -> list[list[str]]:
    """Sample `samples` answers per conversation; returns answers[i][j] for conversation i.

    Prompts are repeated `samples` times inside a batch (not via num_return_sequences) so that
    batches stay full whatever the mix; temperature 0 means greedy.
    """
    from ..passes import count

    count("generation")
    prompts = render_prompts(tokenizer, conversations)
    flat = [(i, p) for i, p in enumerate(prompts) for _ in range(samples)]
    out: list[list[str]] = [[] for _ in prompts]
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    stops = stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0] if stops else None
    try:
        with progress_bar(description, len(flat)) as tick:
            for start in range(0, len(flat), batch_size):
                chunk = flat[start:start + batch_size]
                enc = tokenizer([p for _, p in chunk], return_tensors="pt", padding=True,
                                add_special_tokens=False).to(device)
                kw = dict(do_sample=True, temperature=temperature, top_p=top_p, **NEUTRAL_SAMPLING) \
                    if temperature > 0 else dict(do_sample=False, repetition_penalty=1.0, no_repeat_ngram_size=0)
                gen = model.generate(**enc, max_new_tokens=max_new_tokens,
                                     pad_token_id=pad, eos_token_id=stops or None, **kw)
                texts = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                for (i, _), t in zip(chunk, texts):
                    out[i].append(t.strip())
                tick(len(chunk))
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return out
