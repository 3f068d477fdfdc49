"""What training keeps in memory for the backward pass, measured on tiny models.

Peak memory of dpo and mix is the activations autograd saves for the backward pass (on
SmolLM2-135M ~1 GB per DPO pair without checkpointing, against 0.5 GB of weights). These tests
count the bytes of saved tensors alive at once during a real training run, so they see what
micro-batches, gradient checkpointing and trl's chunked LM head actually keep.
"""

import contextlib
import copy
import weakref

import pytest
import torch

from realign.repairs import load_all
from realign.repairs.base import RepairState

from tiny_models import four_dpo_pairs, tiny_trio

REPAIRS = load_all()


@contextlib.contextmanager
def saved_activation_peak():
    """The most bytes of tensors saved for backward (weights excluded) alive at once while open."""
    live, peak = [0], [0]

    def forget(n):
        live[0] -= n

    def pack(t):
        base = t._base if t._base is not None else t
        if not base.is_leaf:            # activations; weights (leaves) and their views live on anyway
            n = t.numel() * t.element_size()
            live[0] += n
            peak[0] = max(peak[0], live[0])
            weakref.finalize(t, forget, n)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield peak


@contextlib.contextmanager
def _tokens_in_flight(model):
    """The largest batch x length the model's embedding sees while open (the padded micro-batch)."""
    sizes = [0]
    hook = model.get_input_embeddings().register_forward_hook(
        lambda mod, args, out: sizes.__setitem__(0, max(sizes[0], args[0].numel())))
    try:
        yield sizes
    finally:
        hook.remove()


def dpo_peak(vocab=400, layers=2, **params) -> tuple[int, int]:
    """(peak bytes of saved activations, tokens in the largest micro-batch) of one dpo step."""
    base, ft, tok = tiny_trio(vocab, layers)
    st = RepairState(model=ft, base=base, tokenizer=tok, probes=four_dpo_pairs())
    with saved_activation_peak() as peak, _tokens_in_flight(ft) as tokens:
        REPAIRS["dpo"]().apply(st, REPAIRS["dpo"].Params(**{"steps": 1, "batch_size": 4, "task_anchors": 0,
                                                            "lr": 1e-3, **params}))
    return peak[0], tokens[0]


def test_dpo_keeps_no_vocabulary_sized_tensor_for_backward():
    """A 262,144-token vocabulary (Gemma 3's) keeps exactly as much for the backward pass as a
    400-token one: trl's chunked LM head saves no batch x length x vocab logits."""
    small, _ = dpo_peak(vocab=400)
    large, _ = dpo_peak(vocab=262_144)
    assert small > 0 and large == small


def test_dpo_activation_memory_follows_the_micro_batch():
    one, _ = dpo_peak(micro_batch_size=1)
    two, _ = dpo_peak(micro_batch_size=2)
    four, _ = dpo_peak(micro_batch_size=4)
    assert two == pytest.approx(2 * one, rel=0.05) and four == pytest.approx(2 * two, rel=0.05)


@pytest.mark.parametrize("layers", [2, 8])
def test_dpo_with_checkpointing_keeps_one_hidden_state_per_layer(layers):
    """The stated bound: with gradient checkpointing a training step keeps at most
    N x H x 4 bytes x (L + 4) for its backward pass (N tokens in the micro-batch, hidden size H,
    L layers: each layer's input, plus the final norm's and the head's), whatever the vocabulary;
    without it, about 24 x N x H x 4 bytes per layer on this architecture."""
    hidden = 32
    plain, n = dpo_peak(layers=layers, gradient_checkpointing=False)
    checkpointed, n2 = dpo_peak(layers=layers, gradient_checkpointing=True, vocab=262_144)
    per_layer_state = n * hidden * 4
    assert n == n2 and n > 0
    assert checkpointed <= per_layer_state * (layers + 4), (checkpointed, per_layer_state)
    assert plain >= per_layer_state * 16 * layers, (plain, per_layer_state)


def test_mix_activation_memory_follows_micro_batch_and_checkpointing():
    base, ft, tok = tiny_trio(400, 2)
    task = [[{"role": "user", "content": f"def f{i}(x): return"}, {"role": "assistant", "content": "x + " * (i + 1)}]
            for i in range(8)]

    def peak(**params):
        st = RepairState(model=copy.deepcopy(ft), base=base, tokenizer=tok, train_conversations=task)
        with saved_activation_peak() as p:
            REPAIRS["mix"]().apply(st, REPAIRS["mix"].Params(steps=1, batch_size=8, audit="off", aligned_share=0.0,
                                                             **params))
        return p[0]

    whole = peak(micro_batch_size=8, gradient_checkpointing=False)
    quarter = peak(micro_batch_size=2, gradient_checkpointing=False)
    checkpointed = peak(micro_batch_size=2, gradient_checkpointing=True)
    assert whole > 0 and quarter < 0.4 * whole and checkpointed < 0.25 * quarter, (whole, quarter, checkpointed)


def test_checkpointing_in_eval_mode_recomputes_and_gives_the_same_input_gradient():
    """harden's layer choice and measuring attacks take gradients for an input (δ) with the model in
    eval mode, where transformers does not checkpoint; activation_checkpointing(in_eval_mode=True)
    makes them recompute too — a fraction of the saved activations, the same gradient — and puts
    every module back in eval mode."""
    from realign.training import activation_checkpointing

    _, ft, _ = tiny_trio(400, 4)
    ft.eval()
    ids = torch.randint(0, 400, (4, 24), generator=torch.Generator().manual_seed(0))

    def input_grad(ctx):
        emb = ft.get_input_embeddings()(ids).detach().requires_grad_(True)
        with ctx, saved_activation_peak() as peak:
            ft(inputs_embeds=emb, use_cache=False).logits[:, -1].logsumexp(-1).sum().backward()
        return emb.grad, peak[0]

    plain, plain_peak = input_grad(contextlib.nullcontext())
    train_only, train_only_peak = input_grad(activation_checkpointing(ft, True))
    recomputed, recomputed_peak = input_grad(activation_checkpointing(ft, True, in_eval_mode=True))
    assert train_only_peak == plain_peak                     # eval mode: transformers alone does not recompute
    assert recomputed_peak * 3 < plain_peak, (recomputed_peak, plain_peak)
    assert torch.allclose(recomputed, plain, atol=1e-6) and torch.allclose(train_only, plain)
    assert not any(m.training for m in ft.modules())
