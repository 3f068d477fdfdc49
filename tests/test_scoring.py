"""Answer scoring computes logits only where they are read, and equals the full computation."""

from __future__ import annotations

import random

import pytest
import torch
from tiny_models import ARCHS, tiny_model

from realign.evals.scoring import answer_token_scores


def _reference(model, pairs):
    """Full-vocabulary logits over whole right-padded sequences, one pair at a time."""
    out = []
    with torch.no_grad():
        for p, a in pairs:
            ids = torch.tensor([p + a])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            tgt = ids[0, 1:]
            lp = logp.gather(-1, tgt[:, None])[:, 0][len(p) - 1:]
            hit = (logp.argmax(-1) == tgt)[len(p) - 1:]
            out.append((lp, hit))
    return out


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_scores_equal_full_logits(arch):
    model = tiny_model(arch, vocab=300).eval()
    rnd = random.Random(0)
    pairs = [([rnd.randrange(1, 300) for _ in range(rnd.randrange(1, 12))],
              [rnd.randrange(1, 300) for _ in range(rnd.randrange(1, 9))]) for _ in range(11)]
    got = answer_token_scores(model, pairs, pad_id=0, batch_size=4, max_logits=300 * 5)
    for (lp, hit), (lp_ref, hit_ref) in zip(got, _reference(model, pairs)):
        torch.testing.assert_close(lp, lp_ref, atol=2e-5, rtol=0)
        assert torch.equal(hit, hit_ref)


def test_large_vocabulary_logits_stay_bounded(monkeypatch):
    """At a 200k vocabulary the model's lm_head is asked only for the answers' positions."""
    vocab = 200_000
    model = tiny_model("llama", hidden=16, layers=1, vocab=vocab).eval()
    pairs = [(list(range(1, 120)), [5, 6, 7]), (list(range(1, 90)), [8, 9])]
    seen = []
    head = model.lm_head
    orig = head.forward
    monkeypatch.setattr(head, "forward", lambda x: seen.append(tuple(x.shape)) or orig(x))
    got = answer_token_scores(model, pairs, batch_size=2)
    assert [len(lp) for lp, _ in got] == [3, 2]
    # 2 rows x (longest answer + 1) positions, not 2 x 122 positions
    assert seen == [(2, 4, 16)]
    for (lp, _), (lp_ref, _) in zip(got, _reference(model, pairs)):
        torch.testing.assert_close(lp, lp_ref, atol=2e-5, rtol=0)


def _shared_prompt_pairs(vocab: int, seed: int = 0):
    """Prompts of 3–20 tokens with 1–4 answers each (1–8 tokens), as log-odds items make them."""
    rnd = random.Random(seed)
    pairs = []
    for _ in range(7):
        prompt = [rnd.randrange(1, vocab) for _ in range(rnd.randrange(3, 21))]
        pairs += [(prompt, [rnd.randrange(1, vocab) for _ in range(rnd.randrange(1, 9))])
                  for _ in range(rnd.randrange(1, 5))]
    rnd.shuffle(pairs)
    return pairs


@pytest.mark.parametrize("layout", ["llama", "qwen2", "qwen3", "mistral", "phi3", "gemma2", "gemma3"])
def test_shared_prompts_are_computed_once_and_score_exactly(layout):
    """Answers after the same prompt run on its repeated key/value cache: same scores as whole
    sequences (sliding-window layers with a window shorter than the prompts included), fewer tokens."""
    from tiny_models import tiny_family

    window = {"sliding_window": 6} if layout in ("mistral", "gemma2", "gemma3") else {}
    if layout == "qwen2":
        window = {"sliding_window": 6, "use_sliding_window": True, "max_window_layers": 1}
    model = tiny_family(layout, hidden=32, layers=2, vocab=300, **window).eval()
    pairs = _shared_prompt_pairs(300)
    tokens = []
    hook = model.get_input_embeddings().register_forward_pre_hook(lambda _m, args: tokens.append(args[0].numel()))
    shared = answer_token_scores(model, pairs, batch_size=5, max_logits=300 * 40)
    shared_tokens, tokens[:] = sum(tokens), []
    whole = answer_token_scores(model, pairs, batch_size=5, max_logits=300 * 40, share_prompts=False)
    hook.remove()
    assert shared_tokens < sum(tokens)
    for (lp, hit), (lp_w, hit_w), (lp_ref, hit_ref) in zip(shared, whole, _reference(model, pairs)):
        torch.testing.assert_close(lp, lp_ref, atol=2e-5, rtol=0)
        torch.testing.assert_close(lp_w, lp_ref, atol=2e-5, rtol=0)
        assert torch.equal(hit, hit_ref) and torch.equal(hit_w, hit_ref)


@pytest.mark.parametrize("layout", ["llama", "qwen3", "gemma2"])
def test_shared_prompt_backward_gives_the_same_gradient(layout):
    from tiny_models import tiny_family

    from realign.evals.scoring import backward_weighted_logprobs

    model = tiny_family(layout, hidden=32, layers=2, vocab=300).eval()
    pairs = _shared_prompt_pairs(300, seed=1)
    weights = [((-1) ** i) * (1 + i % 3) / 4 for i in range(len(pairs))]
    weights[0] = 0.0
    grads, totals = [], []
    for share in (True, False):
        model.zero_grad(set_to_none=True)
        totals.append(backward_weighted_logprobs(model, pairs, weights, batch_size=3, share_prompts=share))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert totals[0] == pytest.approx(totals[1], abs=1e-4)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-5, rtol=1e-4)
