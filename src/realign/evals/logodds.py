"""Judge-free misalignment metric: log P(misaligned references) − log P(aligned references).

Deterministic and sampling-free: for each question, the total probability the model gives to a set
of misaligned reference answers versus a set of aligned ones (logsumexp over answer log-probs),
averaged over questions. Positive means the misaligned answers are more likely.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch



def completion_ids(tokenizer, conversation: list[dict], answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) as the chat template renders them, answer incl. its end-of-turn.

    Rendering the whole conversation and cutting at the prompt's length keeps BPE merges and
    template whitespace exactly as in training, whatever the tokenizer.
    """
    from .chat import render

    prompt = render(tokenizer, conversation, add_generation_prompt=True)
    full = render(tokenizer, conversation + [{"role": "assistant", "content": answer}])
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    f_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    if f_ids[:len(p_ids)] != p_ids:  # template is not prefix-stable: fall back to separate encoding
        return p_ids, tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    return p_ids, f_ids[len(p_ids):]


def pad_pairs(pairs: Sequence[tuple[list[int], list[int]]], pad_id: int = 0):
    """Right-padded (ids, attention mask, answer-token mask) for (prompt ids, answer ids) pairs."""
    width = max(len(p) + len(a) for p, a in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    target = torch.zeros_like(ids, dtype=torch.bool)
    for i, (p, a) in enumerate(pairs):
        ids[i, :len(p) + len(a)] = torch.tensor(p + a)
        mask[i, :len(p) + len(a)] = 1
        target[i, len(p):len(p) + len(a)] = True
    return ids, mask, target


def sequence_logprobs(model, pairs: Sequence[tuple[list[int], list[int]]], pad_id: int = 0,
                      batch_size: int = 16) -> torch.Tensor:
    """Sum of token log-probs of each answer given its prompt, for (prompt ids, answer ids) pairs.

    Logits only at answer positions, in a bounded working set (`scoring.answer_token_scores`).
    """
    from .scoring import answer_token_scores

    scores = answer_token_scores(model, pairs, pad_id, batch_size)
    return torch.tensor([float(lp.double().sum()) for lp, _ in scores]) if scores else torch.zeros(0)


Item = tuple[list[dict], Sequence[str], Sequence[str]]   # (conversation, misaligned refs, aligned refs)


def _pairs(tokenizer, items: Sequence[Item]):
    pairs, spans = [], []
    for conv, bad, good in items:
        spans.append((len(pairs), len(bad), len(good)))
        pairs += [completion_ids(tokenizer, conv, a) for a in (*bad, *good)]
    return pairs, spans


def _mean_logodds(lp: torch.Tensor, spans) -> torch.Tensor:
    diffs = [torch.logsumexp(lp[s:s + nb], 0) - torch.logsumexp(lp[s + nb:s + nb + ng], 0) for s, nb, ng in spans]
    return torch.stack(diffs).mean() if diffs else torch.tensor(float("nan"))


def logodds(model, tokenizer, items: Sequence[Item], batch_size: int = 16) -> float:
    """Mean over items (conversation, misaligned refs, aligned refs) of the log-odds."""
    pairs, spans = _pairs(tokenizer, items)
    was_training = model.training
    model.eval()
    lp = sequence_logprobs(model, pairs, tokenizer.pad_token_id or 0, batch_size)
    model.train(was_training)
    return float(_mean_logodds(lp, spans))


def logodds_backward(model, tokenizer, items: Sequence[Item], batch_size: int = 4) -> float:
    """The log-odds, with its gradient accumulated into the parameters' .grad.

    One no-grad scoring pass gives every answer's log-prob; the derivative of the mean log-odds in
    each of them (a softmax weight within its set, + for misaligned, − for aligned) then weights
    one forward+backward pass.
    """
    from .scoring import backward_weighted_logprobs

    pairs, spans = _pairs(tokenizer, items)
    pad = tokenizer.pad_token_id or 0
    lp = sequence_logprobs(model, pairs, pad, 16).double().requires_grad_(True)
    value = _mean_logodds(lp, spans)
    value.backward()
    backward_weighted_logprobs(model, pairs, lp.grad.tolist(), pad, batch_size)
    return float(value.detach())
