"""Log-probabilities of given answers, with logits computed only where they are read.

A causal LM's forward pass returns (batch, length, vocab) logits; at a 262k vocabulary and a few
hundred tokens that is gigabytes for one batch, almost all of it for prompt positions nobody
reads. Here prompts are left-padded so that every answer ends in the last column; the model is
asked for logits of the last K+1 positions only (`logits_to_keep`, K = the longest answer in the
batch), and those are reduced to one log-probability per answer token a few rows at a time, so
the working set stays under `max_logits` floats whatever the vocabulary. Position ids are passed
explicitly, so left padding changes nothing for absolute or relative position encodings.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

from ..passes import count

Pair = tuple[list[int], list[int]]   # (prompt ids, answer ids)


def _left_pad(pairs: Sequence[Pair], pad_id: int):
    width = max(len(p) + len(a) for p, a in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, a) in enumerate(pairs):
        seq = p + a
        ids[i, width - len(seq):] = torch.tensor(seq)
        mask[i, width - len(seq):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def vocab_size(model) -> int:
    head = model.get_output_embeddings()
    return head.weight.shape[0] if head is not None else model.config.vocab_size


def batches(pairs: Sequence[Pair], batch_size: int, vocab: int, max_logits: int):
    """Index lists, shortest sequences first, each small enough that rows × (longest answer + 1) ×
    vocab ≤ max_logits — the model itself is never asked for more logits than that at once."""
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    batch: list[int] = []
    keep = 0
    for i in order:
        k = max(keep, len(pairs[i][1]) + 1)
        if batch and (len(batch) >= batch_size or (len(batch) + 1) * k * vocab > max_logits):
            yield batch
            batch, k = [], len(pairs[i][1]) + 1
        batch.append(i)
        keep = k
    if batch:
        yield batch


def batch_inputs(pairs: Sequence[Pair], idx: list[int], pad_id: int, device):
    """(batch pairs, keep = longest answer + 1, ids, attention mask, position ids) for one batch."""
    batch = [pairs[i] for i in idx]
    keep = max(len(a) for _, a in batch) + 1
    ids, mask, pos = (t.to(device) for t in _left_pad(batch, pad_id))
    return batch, keep, ids, mask, pos


@torch.no_grad()
def answer_token_scores(model, pairs: Sequence[Pair], pad_id: int = 0, batch_size: int = 16,
                        max_logits: int = 1 << 26, share_prompts: bool = True
                        ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each (prompt, answer) pair: (log-prob of each answer token, was it the argmax?).

    `max_logits` bounds the vocabulary logits asked of the model at once (default 64M floats,
    256 MiB in fp32), whatever the batch size: batches are cut to fit it.
    """
    count("scoring")
    if share_prompts and _prompts_repeat(pairs):
        try:
            return _shared_prompt_scores(model, pairs, pad_id, batch_size, max_logits)
        except (AttributeError, TypeError, NotImplementedError):
            pass  # a model whose cache cannot be reordered: score every sequence whole
    device = next(model.parameters()).device
    out: list[tuple[torch.Tensor, torch.Tensor]] = [None] * len(pairs)  # type: ignore[list-item]
    for idx in batches(pairs, batch_size, vocab_size(model), max_logits):
        batch, keep, ids, mask, pos = batch_inputs(pairs, idx, pad_id, device)
        logits = _at_least_fp32(_last_logits(model, ids, mask, pos, keep)[:, :-1])   # (b, keep - 1, vocab)
        # logits at column j of the kept block predict the token at column j + 1
        targets = ids[:, -keep + 1:]
        logp = logits.gather(-1, targets[..., None])[..., 0] - torch.logsumexp(logits, -1)
        hit = logits.argmax(-1) == targets
        del logits
        for k, (_, a) in enumerate(batch):
            n = len(a)
            out[idx[k]] = (logp[k, keep - 1 - n:].cpu(), hit[k, keep - 1 - n:].cpu())
    return out


def _prompts_repeat(pairs: Sequence[Pair]) -> bool:
    """Does some prompt carry more than one answer (so computing it once saves work)?"""
    return len({tuple(p) for p, _ in pairs}) < len(pairs)


def prompt_groups(pairs: Sequence[Pair], batch_size: int, vocab: int, max_logits: int):
    """Batches of (prompt, answer indices) units for shared-prompt scoring: each unit's answers
    share its prompt; a batch holds ≤ batch_size answers and ≤ max_logits answer-position logits."""
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for i, (p, _) in enumerate(pairs):
        by_prompt.setdefault(tuple(p), []).append(i)
    units = [(p, idx[s:s + batch_size]) for p, idx in sorted(by_prompt.items(), key=lambda kv: len(kv[0]))
             for s in range(0, len(idx), batch_size)]
    batch: list[tuple[tuple[int, ...], list[int]]] = []
    rows = width = 0
    for prompt, idx in units:
        w = max(width, max(len(pairs[i][1]) for i in idx))
        if batch and (rows + len(idx) > batch_size or (rows + len(idx)) * w * vocab > max_logits):
            yield batch
            batch, rows, w = [], 0, max(len(pairs[i][1]) for i in idx)
        batch.append((prompt, idx))
        rows, width = rows + len(idx), w
    if batch:
        yield batch


def _shared_prompt_scores(model, pairs: Sequence[Pair], pad_id: int, batch_size: int, max_logits: int):
    """`answer_token_scores` computing each distinct prompt once: the prompts' key/value cache is
    repeated for their answers, which then run on top of it (a repair's log-odds items put six
    reference answers after each prompt, and prompts are most of the tokens)."""
    out: list = [None] * len(pairs)
    for rows, logps, hits in _shared_prompt_batches(model, pairs, pad_id, batch_size, max_logits):
        for k, i in enumerate(rows):
            out[i] = (logps[k].cpu(), hits[k].cpu())
    return out


def _shared_prompt_batches(model, pairs: Sequence[Pair], pad_id: int, batch_size: int, max_logits: int):
    """Per batch: (pair indices, each answer's token log-probs, argmax hits), prompts run once per
    batch and their cache repeated for their answers; differentiable when grad is on."""
    device = next(model.parameters()).device
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    # transformers ≥ 5.24 names the argument `cache` (`past_key_values` goes in 5.40)
    cache_kw = "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"
    for units in prompt_groups(pairs, batch_size, vocab_size(model), max_logits):
        ids, mask, pos = (t.to(device) for t in _left_pad([(list(p), []) for p, _ in units], pad_id))
        try:
            res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        except TypeError:
            res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        first = torch.log_softmax(_at_least_fp32(res.logits[:, -1]), -1)          # (prompts, vocab)
        rows = [(u, i) for u, (_, idx) in enumerate(units) for i in idx]
        unit_of = torch.tensor([u for u, _ in rows], device=device)
        answers = [pairs[i][1] for _, i in rows]
        width = max(len(a) for a in answers) - 1                  # an answer's last token predicts nothing read
        logps = [first[unit_of[k], a[0]][None] for k, a in enumerate(answers)]
        hits = [(first[unit_of[k]].argmax() == a[0])[None] for k, a in enumerate(answers)]
        if width > 0:
            cache = getattr(res, "cache", None) or res.past_key_values
            cache.reorder_cache(unit_of)                          # one cache row per answer
            a_ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
            a_mask = torch.zeros_like(a_ids)
            for k, a in enumerate(answers):
                a_ids[k, :len(a) - 1] = torch.tensor(a[:-1], device=device)
                a_mask[k, :len(a) - 1] = 1
            full_mask = torch.cat([mask[unit_of], a_mask], 1)
            a_pos = mask.sum(1)[unit_of][:, None] + torch.arange(width, device=device)[None]
            logits = _at_least_fp32(model(input_ids=a_ids, attention_mask=full_mask, position_ids=a_pos,
                                          use_cache=True, **{cache_kw: cache}).logits)
            for k, a in enumerate(answers):
                n = len(a) - 1
                if n:
                    tgt = torch.tensor(a[1:], device=device)
                    row = logits[k, :n]
                    logps[k] = torch.cat([logps[k], row.gather(-1, tgt[:, None])[:, 0] - torch.logsumexp(row, -1)])
                    hits[k] = torch.cat([hits[k], row.argmax(-1) == tgt])
            del logits, cache
        yield [i for _, i in rows], logps, hits


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def _last_logits(model, ids, mask, positions, keep: int) -> torch.Tensor:
    """Logits of the last `keep` positions; models without `logits_to_keep` compute all and cut."""
    try:
        return model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep,
                     use_cache=False).logits[:, -keep:]
    except TypeError:
        return model(input_ids=ids, attention_mask=mask, position_ids=positions,
                     use_cache=False).logits[:, -keep:]


def _shared_prompt_backward(model, pairs, weights, pad_id, batch_size, max_logits) -> float:
    kept = [i for i, w in enumerate(weights) if w != 0]
    sub = [pairs[i] for i in kept]
    total = 0.0
    for rows, logps, _ in _shared_prompt_batches(model, sub, pad_id, batch_size, max_logits):
        loss = sum(float(weights[kept[i]]) * lp.sum() for i, lp in zip(rows, logps))
        loss.backward()
        total += float(loss.detach())
    return total


def backward_weighted_logprobs(model, pairs: Sequence[Pair], weights: Sequence[float], pad_id: int = 0,
                               batch_size: int = 4, max_logits: int = 1 << 24, share_prompts: bool = True) -> float:
    """Accumulate into .grad the gradient of Σ_j w_j · log P(answer_j | prompt_j); returns the sum.

    Any loss that is a smooth function of whole-answer log-probs (mean token NLL, log-odds of
    answer sets) has this form locally, with w_j its derivative in answer j's log-prob: one
    forward and one backward pass over the items give its gradient for every parameter at once.
    """
    count("backward")
    if share_prompts and _prompts_repeat(pairs):
        try:
            return _shared_prompt_backward(model, pairs, weights, pad_id, batch_size, max_logits)
        except (AttributeError, TypeError, NotImplementedError):
            pass  # a cache that cannot be reordered fails in the first batch, before any backward
    device = next(model.parameters()).device
    total = 0.0
    for idx in batches(pairs, batch_size, vocab_size(model), max_logits):
        idx = [i for i in idx if weights[i] != 0]
        if not idx:
            continue
        batch, keep, ids, mask, pos = batch_inputs(pairs, idx, pad_id, device)
        logits = _at_least_fp32(_last_logits(model, ids, mask, pos, keep)[:, :-1])
        w = torch.tensor([float(weights[i]) for i in idx], device=device, dtype=logits.dtype)
        targets = ids[:, -keep + 1:]
        answer = torch.zeros_like(targets, dtype=torch.bool)
        for k, (_, a) in enumerate(batch):
            answer[k, keep - 1 - len(a):] = True
        logp = logits.gather(-1, targets[..., None])[..., 0] - torch.logsumexp(logits, -1)
        loss = ((logp * answer).sum(-1) * w).sum()
        loss.backward()
        total += float(loss.detach())
    return total


@torch.no_grad()
def answer_hidden_means(model, layers: Sequence[torch.nn.Module], pairs: Sequence[Pair], pad_id: int = 0,
                        batch_size: int = 16) -> torch.Tensor:
    """(pairs, layers, hidden): each layer's output averaged over each answer's tokens, in one pass.

    Forward hooks on the given blocks reduce their outputs to per-answer means as the batch goes
    through, so nothing of size layers × tokens × hidden is kept; the vocabulary head runs on one
    position only.
    """
    count("activations")
    device = next(model.parameters()).device
    out = None
    current: dict[str, torch.Tensor] = {}
    grabbed: list[torch.Tensor] = [None] * len(layers)  # type: ignore[list-item]

    def hook(i):
        def grab(_module, _inputs, output):
            h = output[0] if isinstance(output, tuple) else output
            m = current["mask"]
            grabbed[i] = ((h.float() * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)).cpu()
        return grab

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = [pairs[i] for i in idx]
            ids, mask, pos = (t.to(device) for t in _left_pad(batch, pad_id))
            answer = torch.zeros(ids.shape, dtype=torch.float32, device=device)
            for k, (_, a) in enumerate(batch):
                answer[k, ids.shape[1] - len(a):] = 1.0
            current["mask"] = answer
            _last_logits(model, ids, mask, pos, 1)
            means = torch.stack(grabbed, 1)                     # (b, layers, hidden)
            if out is None:
                out = torch.zeros(len(pairs), *means.shape[1:])
            out[idx] = means
    finally:
        for h in handles:
            h.remove()
    return out
