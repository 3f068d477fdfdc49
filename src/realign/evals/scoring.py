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

from collections.abc import Sequence

import torch

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


@torch.no_grad()
def answer_token_scores(model, pairs: Sequence[Pair], pad_id: int = 0, batch_size: int = 16,
                        max_logits: int = 1 << 26) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each (prompt, answer) pair: (log-prob of each answer token, was it the argmax?).

    `max_logits` bounds the floats of vocabulary logits held at once (default 64M, 256 MiB).
    """
    device = next(model.parameters()).device
    out: list[tuple[torch.Tensor, torch.Tensor]] = [None] * len(pairs)  # type: ignore[list-item]
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = [pairs[i] for i in idx]
        keep = max(len(a) for _, a in batch) + 1
        ids, mask, pos = (t.to(device) for t in _left_pad(batch, pad_id))
        hidden_logits = _last_logits(model, ids, mask, pos, keep)          # (b, keep, vocab)
        vocab = hidden_logits.shape[-1]
        rows = max(1, max_logits // max(1, keep * vocab))
        for r0 in range(0, len(batch), rows):
            chunk = hidden_logits[r0:r0 + rows].float()
            # logits at column j of the kept block predict the token at column j + 1
            targets = ids[r0:r0 + rows, -keep + 1:]
            lse = torch.logsumexp(chunk[:, :-1], -1)
            gold = chunk[:, :-1].gather(-1, targets[..., None])[..., 0]
            logp = gold - lse
            hit = chunk[:, :-1].argmax(-1) == targets
            for k, (_, a) in enumerate(batch[r0:r0 + rows]):
                n = len(a)
                out[idx[r0 + k]] = (logp[k, keep - 1 - n:].cpu(), hit[k, keep - 1 - n:].cpu())
            del chunk
        del hidden_logits
    return out


def _last_logits(model, ids, mask, positions, keep: int) -> torch.Tensor:
    """Logits of the last `keep` positions; models without `logits_to_keep` compute all and cut."""
    try:
        return model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep,
                     use_cache=False).logits[:, -keep:]
    except TypeError:
        return model(input_ids=ids, attention_mask=mask, position_ids=positions,
                     use_cache=False).logits[:, -keep:]
