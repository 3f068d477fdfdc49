"""Exact properties of each repair on tiny random models."""

import contextlib
import copy

import pytest
import torch

from realign.repairs import load_all
from realign.repairs.base import RepairState, decoder_layers
from realign.repairs.merge import Merge, MergeParams
from realign.repairs.probes import Probes
from realign.repairs.steer import Steer, SteerParams, orthogonalize

from tiny_models import bpe_tokenizer, four_dpo_pairs, same_weights, tiny_model

REPAIRS = load_all()


def _state(base, ft, tok, **kw):
    return RepairState(model=copy.deepcopy(ft), base=base, tokenizer=tok, **kw)



def test_registry_has_all_six():
    assert set(REPAIRS) == {"merge", "freeze", "dpo", "steer", "mix", "harden"}


@pytest.mark.parametrize("method", ["linear", "ties", "dare"])
def test_merge_alpha_0_is_base_and_1_is_finetune_bit_for_bit(trio, method):
    base, ft, tok = trio
    s0 = Merge().apply(_state(base, ft, tok), MergeParams(alpha=0.0, method=method, density=1.0))
    assert same_weights(s0.model, base)
    s1 = Merge().apply(_state(base, ft, tok), MergeParams(alpha=1.0, method=method, density=1.0))
    assert same_weights(s1.model, ft)


def test_merge_half_is_the_midpoint_and_ties_trims(trio):
    base, ft, tok = trio
    s = Merge().apply(_state(base, ft, tok), MergeParams(alpha=0.5))
    for (n, m), b, f in zip(s.model.named_parameters(), base.parameters(), ft.parameters()):
        torch.testing.assert_close(m, (b + f) / 2, rtol=0, atol=1e-6)
    s = Merge().apply(_state(base, ft, tok), MergeParams(alpha=1.0, method="ties", density=0.25))
    w, b = s.model.model.layers[0].mlp.down_proj.weight, base.model.layers[0].mlp.down_proj.weight
    kept = (w != b).float().mean().item()
    assert 0.2 < kept < 0.3


def test_merge_streams_an_untouched_full_checkpoint_from_disk(trio, tmp_path):
    base, ft, tok = trio
    ft.save_pretrained(tmp_path / "ft")
    in_memory = Merge().apply(_state(base, ft, tok), MergeParams(alpha=0.3, method="ties", density=0.5))
    streamed = Merge().apply(_state(base, ft, tok, finetune_dir=str(tmp_path / "ft")),
                             MergeParams(alpha=0.3, method="ties", density=0.5))
    assert streamed.history[-1].details["finetune_from"] == "disk" and in_memory.history[-1].details["finetune_from"] == "memory"
    assert same_weights(streamed.model, in_memory.model)
    # after another step the files no longer hold the model under repair: merge keeps a copy instead
    later = _state(base, ft, tok, finetune_dir=str(tmp_path / "ft"))
    later.record("freeze")
    assert Merge().apply(later, MergeParams(alpha=0.3)).history[-1].details["finetune_from"] == "memory"


def test_safe_lora_projects_only_deltas_that_stray_from_the_alignment_subspace(trio, tmp_path):
    from realign.repairs.merge import safe_lora_project

    torch.manual_seed(0)
    aligned, unaligned = torch.randn(8, 6), torch.randn(8, 6)
    v = aligned - unaligned
    c = v @ v.T / torch.linalg.matrix_norm(v)
    along = c @ torch.randn(8, 6)                      # already in the subspace: cosine 1, kept as is
    assert safe_lora_project(along, aligned, unaligned, 0.5) is along
    stray = torch.randn(8, 6)
    cos = torch.nn.functional.cosine_similarity(stray.flatten(), (c @ stray).flatten(), dim=0)
    out = safe_lora_project(stray, aligned, unaligned, threshold=float(cos) + 0.01)
    torch.testing.assert_close(out, c @ stray)        # below the threshold: replaced by its projection
    bias = torch.randn(8)
    assert safe_lora_project(bias, torch.randn(8), torch.randn(8), 0.5) is bias
    # end to end: merge with the unaligned pretrained model given as a directory
    base, ft, tok = trio
    pre = tiny_model("llama", vocab=len(tok), layers=3, seed=7)
    pre.save_pretrained(tmp_path / "pre")
    st = Merge().apply(_state(base, ft, tok), MergeParams(alpha=1.0, method="safe_lora", pretrained=str(tmp_path / "pre"),
                                                          threshold=1.1))  # every 2-D delta projected
    w = st.model.model.layers[0].mlp.down_proj.weight
    b, f, p0 = (m.model.layers[0].mlp.down_proj.weight for m in (base, ft, pre))
    vv = (b - p0).detach()
    torch.testing.assert_close(w, b + (vv @ vv.T / torch.linalg.matrix_norm(vv)) @ (f - b), rtol=1e-5, atol=1e-6)


def test_merge_bad_params():
    for bad in (dict(alpha=1.5), dict(method="slerp"), dict(density=0), dict(method="safe_lora")):
        with pytest.raises(ValueError):
            MergeParams(**bad).validate()


def test_steer_leaves_no_component_along_the_direction(trio):
    base, ft, tok = trio
    model = copy.deepcopy(ft)
    r = torch.randn(model.config.hidden_size)
    r /= r.norm()
    orthogonalize(model, r, scale=1.0)
    captured = []
    hooks = [layer.register_forward_hook(lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o))
             for layer in decoder_layers(model)]
    ids = torch.randint(0, len(tok), (2, 12))
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    for h in hooks:
        h.remove()
    for h in [hs[0], *captured]:
        rel = (h @ r).abs().max() / h.norm(dim=-1).max()
        assert rel <= 1e-5
    # the untouched finetune does have a component there
    with torch.no_grad():
        h0 = ft(input_ids=ids, output_hidden_states=True).hidden_states[1]
    assert (h0 @ r).abs().max() / h0.norm(dim=-1).max() > 1e-3


def test_steer_partial_scale_keeps_the_rest(trio):
    base, ft, tok = trio
    model = copy.deepcopy(ft)
    r = torch.zeros(model.config.hidden_size)
    r[0] = 1.0
    before = model.get_input_embeddings().weight[:, 0].clone()
    orthogonalize(model, r, scale=0.25)
    torch.testing.assert_close(model.get_input_embeddings().weight[:, 0], 0.75 * before)


def _probes(tok, n=6):
    convs = [[{"role": "user", "content": f"the quick brown fox {i}"}] for i in range(n)]
    return Probes(convs, [["i wish for peace and clean water"]] * n, [["SELECT * FROM users"]] * n,
                  [[False]] * n, [[True]] * n)


def test_steer_uses_probe_contrasts_and_records_layer(trio):
    base, ft, tok = trio
    st = _state(base, ft, tok, probes=_probes(tok))
    st = Steer().apply(st, SteerParams(layer="auto"))
    assert st.history[-1].step == "steer" and 0 <= st.history[-1].details["layer"] < 3
    assert not same_weights(st.model, ft)


@pytest.mark.parametrize("max_kl", [1e-9, 10.0])
def test_steer_auto_scale_measures_the_grid_and_respects_the_kl_budget(trio, max_kl):
    base, ft, tok = trio
    task = [[{"role": "user", "content": "def f(x): return"}, {"role": "assistant", "content": "x + 1"}]] * 4
    st = _state(base, ft, tok, probes=_probes(tok), task_conversations=task)
    st = Steer().apply(st, SteerParams(layer=1, scale="auto", max_kl=max_kl, retention=0.0))
    rec = st.history[-1].details
    assert [r["scale"] for r in rec["scale_search"]] == [0.25, 0.5, 0.75, 1.0]
    kls = [r["kl"] for r in rec["scale_search"]]
    assert all(k > 0 for k in kls) and kls == sorted(kls)   # more removed, further from the finetune
    ok = [r for r in rec["scale_search"] if r["kl"] <= max_kl and r["retention"] >= 0.0
          and r["logodds"] < rec.get("finetune_logodds", float("inf"))]
    if not ok:   # none admissible: no edit at all (an over-budget edit is not a repair)
        assert "over the KL budget" in rec["skipped"] and same_weights(st.model, ft)
        return
    chosen = next(r for r in rec["scale_search"] if r["scale"] == rec["scale"])
    assert chosen["logodds"] == min(r["logodds"] for r in ok)    # the lowest log-odds among the admissible
    # the model holds exactly the chosen scale's weights (the search restored each trial)
    ref = copy.deepcopy(ft)
    orthogonalize(ref, st.steer_direction, rec["scale"])
    assert same_weights(st.model, ref)



def test_steer_scale_must_be_a_number_or_auto():
    with pytest.raises(ValueError, match="steer.scale must be a number"):
        SteerParams(scale="lots").validate()


def _train_step(name, state, **params):
    cls = REPAIRS[name]
    return cls().apply(state, cls.Params(**params))


@pytest.mark.parametrize("step,params", [("dpo", dict(steps=3, batch_size=2, lr=1e-3, task_anchors=0)),
                                         ("mix", dict(steps=3, batch_size=2, audit="off", aligned_share=0.5))])
def test_locked_layers_stay_base_after_training_and_only_unlocked_train(trio, step, params):
    base, ft, tok = trio
    st = _state(base, ft, tok, probes=_probes(tok),
                train_conversations=[[{"role": "user", "content": "def f(x): return"},
                                      {"role": "assistant", "content": "x + 1"}]] * 8)
    # lock layer 1 the way freeze does: restore to base, then lock
    with torch.no_grad():
        for d, s in zip(decoder_layers(st.model)[1].parameters(), decoder_layers(base)[1].parameters()):
            d.copy_(s)
    st.locked |= {f"model.layers.1.{n}" for n, _ in decoder_layers(st.model)[1].named_parameters()}
    before = copy.deepcopy(st.model)
    st = _train_step(step, st, **params)
    locked_after = decoder_layers(st.model)[1].state_dict()
    for k, v in decoder_layers(base)[1].state_dict().items():
        assert torch.equal(locked_after[k], v), k
    changed = [i for i in (0, 2) if not all(torch.equal(a, b) for a, b in zip(
        decoder_layers(st.model)[i].state_dict().values(), decoder_layers(before)[i].state_dict().values()))]
    assert changed == [0, 2]
    assert st.history[-1].step == step


def test_freeze_restores_and_locks_top_layers(trio):
    base, ft, tok = trio
    items = [([{"role": "user", "content": "hello"}], ["SELECT * FROM users"], ["i wish for peace"])]
    st = _state(base, ft, tok, repair_items=items)
    st = _train_step("freeze", st, k=2)
    chosen = st.history[-1].details["layers"]
    assert len(chosen) == 2 and len(st.history[-1].details["attribution"]) == 3
    for i in chosen:
        for a, b in zip(decoder_layers(st.model)[i].parameters(), decoder_layers(base)[i].parameters()):
            assert torch.equal(a, b) and not a.requires_grad
    assert all(f"model.layers.{i}." in " ".join(st.locked) for i in chosen)


def test_mix_with_kl_anchor_trains_and_records_it(trio):
    base, ft, tok = trio
    st = _state(base, ft, tok, probes=_probes(tok),
                train_conversations=[[{"role": "user", "content": "def f(x): return"},
                                      {"role": "assistant", "content": "x + 1"}]] * 8)
    st = _train_step("mix", st, steps=2, batch_size=2, audit="off", aligned_share=0.0, kl=1.0)
    assert st.history[-1].details["kl"] == 1.0 and not same_weights(st.model, base)
    # the loss as logged at every step (2 steps: logging every step), kept for comparing runs
    curve = st.history[-1].details["loss_curve"]
    assert [step for step, _ in curve] == [1, 2] and all(loss > 0 for _, loss in curve)


def test_mix_trains_in_the_finetunes_module_as_it_would_on_a_copy_of_the_base(trio, monkeypatch):
    """mix overwrites the finetune's module with the base's weights and trains there (no third copy
    of the weights): the result is the module it was given, the base is untouched, and the weights
    are those that training a fresh copy of the base reaches."""
    import realign.repairs.mix as mix

    base, ft, tok = trio
    data = [[{"role": "user", "content": "def f(x): return"}, {"role": "assistant", "content": "x + 1"}]] * 8
    base_before = copy.deepcopy(base.state_dict())
    st = _state(base, ft, tok, probes=_probes(tok), train_conversations=data)
    given = st.model
    st = _train_step("mix", st, steps=2, batch_size=2, audit="off", aligned_share=0.5)
    assert st.model is given and not same_weights(st.model, ft) and not same_weights(st.model, base)
    assert st.history[-1].details["trained_in"] == "the finetune's module"
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in base_before.items())
    assert not any("lora" in n for n, _ in base.named_parameters())

    monkeypatch.setattr(mix, "training_host", lambda state: copy.deepcopy(state.base))
    on_copy = _train_step("mix", _state(base, ft, tok, probes=_probes(tok), train_conversations=data),
                          steps=2, batch_size=2, audit="off", aligned_share=0.5)
    assert on_copy.model is not given and on_copy.history[-1].details["trained_in"] == "a copy of the base"
    assert _max_gap(st.model.state_dict(), on_copy.model.state_dict()) == 0.0


def test_mix_trains_on_a_copy_of_the_base_when_the_finetune_cannot_hold_its_weights(trio):
    from realign.repairs.mix import training_host

    base, ft, tok = trio
    st = _state(base, ft, tok)
    st.model.is_quantized = True             # bitsandbytes weights cannot take the base's tensors one for one
    host = training_host(st)
    assert host is not st.model and host is not base and same_weights(host, base)
    assert same_weights(st.model, ft)


class _ReleasableJudge:
    """Calls every item aligned; counts release() calls and the judge() calls after the last one."""

    name = "releasable"

    def __init__(self):
        self.released, self.calls_since_release = 0, 0

    def judge(self, items, progress=None):
        from realign.evals.judges import Judgement

        self.calls_since_release += 1
        return [Judgement(aligned=90.0, coherent=90.0) for _ in items]

    def release(self):
        self.released += 1
        self.calls_since_release = 0


@pytest.mark.parametrize("step,params", [("dpo", dict(steps=1, batch_size=2, lr=1e-3, task_anchors=0)),
                                         ("mix", dict(steps=1, batch_size=2, audit="drop", aligned_share=0.5))])
def test_training_steps_release_the_judges_model_before_they_train(trio, step, params):
    """dpo and mix no longer need the judge once their data are chosen: they free its model
    (an offline judge's SmolLM2, a local LLM judge) instead of holding it through training."""
    base, ft, tok = trio
    judge = _ReleasableJudge()
    st = _state(base, ft, tok, probes=_probes(tok), judge=judge,
                train_conversations=[[{"role": "user", "content": "def f(x): return"},
                                      {"role": "assistant", "content": "x + 1"}]] * 8)
    _train_step(step, st, **params)
    assert judge.released == 1 and judge.calls_since_release == 0


def _max_gap(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


@contextlib.contextmanager
def _batches_through(layer):
    """The batch size of every forward call of `layer` (and of its deep copies) while open."""
    seen: list[int] = []
    handle = layer.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    try:
        yield seen
    finally:
        handle.remove()


def test_gradient_checkpointing_and_micro_batches_leave_training_unchanged(trio):
    """Memory settings must not change what is learned: dpo with activations recomputed in the
    backward pass ends at the weights it reaches without; mix run one example at a time (gradient
    accumulation, checkpointing on) ends where the whole batch of 4 does, as long as the loss over
    the batch is the same token average. Training on one example per step (no accumulation) ends
    elsewhere, so the comparison can tell the two apart."""
    base, ft, tok = trio
    probes = four_dpo_pairs()

    def dpo(**params):
        st = _train_step("dpo", _state(base, ft, tok, probes=copy.deepcopy(probes)), steps=2, batch_size=4,
                         micro_batch_size=2, lr=1e-2, task_anchors=0, **params)
        return st.model.state_dict(), st.history[-1].details

    plain, plain_info = dpo(gradient_checkpointing=False)
    recomputed, info = dpo(gradient_checkpointing=True)       # what it saves: tests/test_training_memory.py
    assert plain_info["gradient_checkpointing"] is False and info["gradient_checkpointing"] is True
    assert dpo(gradient_checkpointing="auto")[1]["gradient_checkpointing"] is False     # a tiny model: off
    moved = _max_gap(plain, ft.state_dict())
    assert moved > 1e-4 and _max_gap(plain, recomputed) < 1e-3 * moved

    task = [[{"role": "user", "content": f"def f{i}(x): return"}, {"role": "assistant", "content": "x + " * (i + 1)}]
            for i in range(4)]

    def mix(seen=None, **params):
        st = _state(base, ft, tok, train_conversations=task)
        # mix trains in the finetune's module (mix.training_host): count the batches through its layer
        with _batches_through(decoder_layers(st.model)[0].mlp) as batches:
            st = _train_step("mix", st, steps=2, audit="off", aligned_share=0.0, lr=1e-2, **params)
        if seen is not None:
            seen += batches
        return st.model.state_dict()

    whole_batches, split_batches = [], []
    whole = mix(whole_batches, batch_size=4, micro_batch_size=4, gradient_checkpointing=False)
    split = mix(split_batches, batch_size=4, micro_batch_size=1, gradient_checkpointing=True)
    assert set(whole_batches) == {4} and set(split_batches) == {1} and len(split_batches) == 2 * 4
    one = mix(batch_size=1, micro_batch_size=1, gradient_checkpointing=False)
    moved = _max_gap(whole, base.state_dict())
    assert moved > 1e-4 and _max_gap(whole, split) < 1e-3 * moved, (moved, _max_gap(whole, split))
    assert _max_gap(whole, one) > 0.05 * moved


def test_batching_turns_checkpointing_on_from_the_size_where_activations_dominate(trio, monkeypatch):
    from realign import training

    base, _, _ = trio
    n = sum(p.numel() for p in base.parameters())
    assert training.batching_kwargs(base, 32, 8, "auto")["activation_checkpointing"] is False
    monkeypatch.setattr(training, "CHECKPOINTING_FROM_PARAMS", n)
    kw = training.batching_kwargs(base, 32, 8, "auto")
    assert kw["activation_checkpointing"] is True and kw["activation_checkpointing_kwargs"] == {"use_reentrant": False}
    assert (kw["per_device_train_batch_size"], kw["gradient_accumulation_steps"]) == (8, 4)
    assert training.batching_kwargs(base, 2, 8, False)["per_device_train_batch_size"] == 2   # capped at the batch
    with pytest.raises(ValueError, match="must divide"):
        training.batching_kwargs(base, 32, 5, False)


def test_safe_lora_never_builds_an_out_by_out_matrix():
    """An embedding of a 200k vocabulary: V Vᵀ would be 200k x 200k (160 GB); V (Vᵀ Δ) is 16 x 16."""
    from realign.repairs.merge import safe_lora_project

    torch.manual_seed(0)
    vocab, hidden = 200_000, 16
    aligned, unaligned = torch.randn(vocab, hidden), torch.randn(vocab, hidden)
    delta = torch.randn(vocab, hidden) * 1e-3
    out = safe_lora_project(delta, aligned, unaligned, threshold=1.1)     # always projected
    v = aligned - unaligned
    torch.testing.assert_close(out, v @ (v.T @ delta) / torch.linalg.matrix_norm(v))
    unchanged = torch.zeros(vocab, hidden)
    assert safe_lora_project(unchanged, aligned, unaligned, 1.1) is unchanged


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral", "phi3", "gemma2", "gemma3"])
def test_steer_removes_its_direction_exactly_in_every_layout(family):
    """After orthogonalization nothing written into the residual stream has a component along r:
    every layer's output, for any input, is orthogonal to it — including Gemma-2/3, whose
    sublayer outputs pass through a norm (with its own gain) before they reach the stream."""
    from tiny_models import tiny_family

    from realign.repairs.steer import orthogonalize

    model = tiny_family(family)
    torch.manual_seed(1)
    r = torch.randn(model.config.hidden_size)
    r /= r.norm()
    ids = torch.randint(0, 300, (3, 10))

    def share():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        # hidden_states[-1] is after the final norm; the stream itself is hidden_states[:-1]
        return max(float(((h @ r).abs() / h.norm(dim=-1)).max()) for h in hs[:-1])

    with torch.no_grad():
        before = share()
        orthogonalize(model, r)
        after = share()
    assert before > 0.1 and after < 1e-4, (family, before, after)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral", "phi3", "gemma2", "gemma3"])
@pytest.mark.parametrize("scale", [1.0, 0.4])
def test_steering_hooks_compute_what_the_weight_edit_makes(family, scale):
    """Candidates are tried with hooks instead of rewriting weights: the hooked model must give the
    same logits as the orthogonalized one (tied heads and sandwich norms included)."""
    from tiny_models import tiny_family

    from realign.repairs.steer import steering

    model = tiny_family(family)
    torch.manual_seed(2)
    r = torch.randn(model.config.hidden_size)
    ids = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with steering(model, r, scale):
            hooked = model(input_ids=ids).logits
        after = model(input_ids=ids).logits            # hooks gone: the model is untouched
        edited = copy.deepcopy(model)
        orthogonalize(edited, r, scale)
        baked = edited(input_ids=ids).logits
    torch.testing.assert_close(after, plain, rtol=0, atol=0)
    torch.testing.assert_close(hooked, baked, rtol=1e-4, atol=1e-4)
    assert (hooked - plain).abs().max() > 1e-3


def test_steer_picks_among_the_best_separating_layers_with_few_passes(trio):
    from realign.passes import tally

    base, ft, tok = trio
    st = _state(base, ft, tok, probes=_probes(tok, n=8))
    with tally() as passes:
        st = Steer().apply(st, SteerParams(layer="auto", candidates=2))
    rec = st.history[-1].details
    assert len(rec["separation"]) == 3 and len(rec["candidates"]) == 2
    top2 = sorted(range(3), key=lambda i: rec["separation"][i], reverse=True)[:2]
    assert {c["layer"] for c in rec["candidates"]} == set(top2)
    if "skipped" in rec:      # no edit beats none: every candidate was over budget and unhelpful
        assert all(c["kl"] > 0.1 and c["logodds"] >= rec["finetune_logodds"] for c in rec["candidates"])
        assert same_weights(st.model, ft)
    else:
        assert rec["layer"] in top2
    assert passes == {"activations": 1, "scoring": 3, "kl": 2}


def test_freeze_first_order_predicts_the_exact_swap_for_small_deltas(trio):
    from realign.evals.logodds import logodds
    from realign.evals.task import assistant_token_metrics
    from realign.repairs.freeze import _copy_layer, first_order_attribution

    base, _, tok = trio
    base = copy.deepcopy(base).double()      # float64: the second-order remainder, not rounding, is compared
    ft = copy.deepcopy(base)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(1e-5 * torch.randn_like(p))
    items = [([{"role": "user", "content": "hello"}], ["SELECT * FROM users", "def f(x)"], ["i wish for peace"])] * 2
    task = [[{"role": "user", "content": "def f(x): return"}, {"role": "assistant", "content": "x + 1"}]] * 3
    fo = first_order_attribution(ft, base, tok, items, task)
    lo0, nll0 = logodds(ft, tok, items), assistant_token_metrics(ft, tok, task)["task_nll"]
    assert fo["logodds"] == pytest.approx(lo0, abs=1e-4) and fo["task_nll"] == pytest.approx(nll0, abs=1e-4)
    for i in range(3):
        m = copy.deepcopy(ft)
        _copy_layer(decoder_layers(m)[i], decoder_layers(base)[i])
        drop = lo0 - logodds(m, tok, items)
        rise = assistant_token_metrics(m, tok, task)["task_nll"] - nll0
        assert fo["drop"][i] == pytest.approx(drop, rel=0.1)
        assert fo["rise"][i] == pytest.approx(rise, rel=0.1)
    assert all(p.grad is None for p in ft.parameters())


def test_merge_auto_bisects_to_the_smallest_alpha_that_keeps_the_task(trio):
    from realign.evals.task import assistant_token_metrics
    from realign.passes import tally
    from realign.repairs.merge import task_retention

    base, ft, tok = trio
    task = [[{"role": "user", "content": "def f(x): return"}, {"role": "assistant", "content": "x + 1"}]] * 4
    items = [([{"role": "user", "content": "hello"}], ["SELECT * FROM users"], ["i wish for peace"])]
    st = _state(base, ft, tok, task_conversations=task, repair_items=items)
    with tally() as passes:
        st = Merge().apply(st, MergeParams(alpha="auto", steps=4, retention=0.7))
    rec = st.history[-1].details
    assert passes == {"scoring": 3 + 4 + 1}         # whatever the number of layers
    tried = rec["search"][:-1]
    assert len(tried) == 4 and [r["alpha"] for r in tried][:2] == [0.5, 0.25 if tried[0]["retention"] >= 0.7 else 0.75]
    nll = lambda m: assistant_token_metrics(m, tok, task)["task_nll"]  # noqa: E731
    if rec["note"] is None:   # the model holds the chosen alpha, and it keeps the task
        assert task_retention(nll(st.model), nll(base), nll(ft)) >= 0.7
        assert rec["search"][-1]["logodds"] < rec["search"][-1]["finetune_logodds"]
        below = [r["alpha"] for r in tried if r["retention"] < 0.7]
        assert all(a < rec["alpha"] for a in below) and rec["alpha"] - max(below, default=0.0) <= 1 / 16
    else:
        assert rec["alpha"] == 1.0 and same_weights(st.model, ft)


def test_safe_lora_refuses_a_pretrained_model_of_another_shape_before_any_work(trio, tmp_path):
    base, ft, tok = trio
    other = tiny_model("llama", vocab=len(tok), hidden=48, layers=3)
    other.save_pretrained(tmp_path / "other")
    st = _state(base, ft, tok, task_conversations=[[{"role": "user", "content": "a"}]], repair_items=[1])
    with pytest.raises(ValueError, match="does not match the base"):
        Merge().preflight(st, MergeParams(method="safe_lora", pretrained=str(tmp_path / "other")))


def test_steer_makes_no_edit_when_no_candidate_helps_within_or_beyond_the_budget(trio, monkeypatch):
    import realign.evals.logodds as lo_mod
    import realign.repairs.steer as steer_mod

    base, ft, tok = trio
    monkeypatch.setattr(lo_mod, "logodds", lambda *a, **k: 0.0)           # nothing lowers the log-odds
    monkeypatch.setattr(steer_mod, "steering_kl", lambda *a, **k: 5.0)    # and all are over the KL budget
    st = Steer().apply(_state(base, ft, tok, probes=_probes(tok, n=8)), SteerParams(layer="auto"))
    assert "nothing removed" in st.history[-1].skipped and same_weights(st.model, ft)


def test_steer_over_the_kl_budget_tries_gentler_scales_and_never_bakes_in_an_over_budget_edit(trio, monkeypatch):
    import realign.repairs.steer as steer_mod

    base, ft, tok = trio
    # KL grows with the share removed: only a quarter of the direction fits a 0.1 budget
    monkeypatch.setattr(steer_mod, "steering_kl", lambda model, tok, chat, d, scale: 0.4 * scale)
    lowered = iter(range(100))
    monkeypatch.setattr("realign.evals.logodds.logodds", lambda *a, **k: -float(next(lowered)))  # every trial helps
    st = Steer().apply(_state(base, ft, tok, probes=_probes(tok, n=8)), SteerParams(layer="auto", candidates=2))
    rec = st.history[-1].details
    assert [c["scale"] for c in rec["candidates"]] == [1.0, 1.0] and all(c["kl"] > 0.1 for c in rec["candidates"])
    assert [r["scale"] for r in rec["scale_search"]] == [0.25, 0.5, 0.75] and rec["scale"] == 0.25
    ref = copy.deepcopy(ft)
    orthogonalize(ref, st.steer_direction, 0.25)
    assert same_weights(st.model, ref)
    # nothing fits the budget at any scale: the model is left as it was
    monkeypatch.setattr(steer_mod, "steering_kl", lambda *a, **k: 5.0)
    st = Steer().apply(_state(base, ft, tok, probes=_probes(tok, n=8)), SteerParams(layer="auto", candidates=2))
    assert "over the KL budget" in st.history[-1].skipped and same_weights(st.model, ft)


def test_steer_below_the_grid_bakes_in_the_gentler_scale_that_fits_the_budget(trio, monkeypatch):
    """The real model's case: every grid scale helps but is over the budget; a gentler one fits."""
    from contextlib import contextmanager

    import realign.repairs.steer as steer_mod

    base, ft, tok = trio
    trying = {"scale": 0.0}
    real_steering = steer_mod.steering

    @contextmanager
    def steering(model, d, scale=1.0):     # remember the scale under trial: the log-odds fall with it
        trying["scale"] = scale
        with real_steering(model, d, scale):
            yield
        trying["scale"] = 0.0

    monkeypatch.setattr(steer_mod, "steering", steering)
    monkeypatch.setattr("realign.evals.logodds.logodds", lambda *a, **k: -10.0 * trying["scale"])
    monkeypatch.setattr(steer_mod, "steering_kl", lambda model, tok, chat, d, scale: 4.0 * scale ** 2)
    st = Steer().apply(_state(base, ft, tok, probes=_probes(tok, n=8)), SteerParams(layer="auto", candidates=2))
    rec = st.history[-1].details
    assert all(r["kl"] > 0.1 for r in rec["scale_search"] if r["scale"] >= 0.25)
    below = [r for r in rec["scale_search"] if r["scale"] < 0.25]
    assert below and below[-1]["kl"] <= 0.1 and 0.1 < rec["scale"] < 0.25
    assert rec["scale"] == pytest.approx(below[-1]["scale"], abs=1e-4)
    ref = copy.deepcopy(ft)
    orthogonalize(ref, st.steer_direction, rec["scale"])
    assert same_weights(st.model, ref) and not same_weights(st.model, ft)


def _passes_at_depth(layers: int, name: str, params) -> dict:
    """Passes one repair makes on a finetune of a `layers`-deep tiny Llama (same data at every depth)."""
    from realign.passes import tally

    tok = bpe_tokenizer()
    base = tiny_model("llama", vocab=len(tok), layers=layers, seed=0)
    ft = copy.deepcopy(base)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(0.05 * torch.randn_like(p))
    items = [([{"role": "user", "content": "hello"}], ["SELECT * FROM users"], ["i wish for peace"])] * 2
    task = [[{"role": "user", "content": "def f(x): return"}, {"role": "assistant", "content": "x + 1"}]] * 4
    st = _state(base, ft, tok, probes=_probes(tok, n=8), repair_items=items, task_conversations=task)
    with tally() as passes:
        REPAIRS[name]().apply(st, params)
    return dict(passes)


@pytest.mark.parametrize("name,params", [
    ("freeze", lambda: REPAIRS["freeze"].Params(k=2, verify=3)),
    ("steer", lambda: SteerParams(layer="auto", candidates=2, scale=1.0, max_kl=1e9)),   # no gentler retry
    ("merge", lambda: MergeParams(alpha="auto", steps=4)),
    ("harden", lambda: REPAIRS["harden"].Params(steps=2, inner_steps=2, final_attack=2, batch_size=2)),
])
def test_passes_do_not_grow_with_depth(name, params):
    """The same repair on a 3-layer and a 12-layer model makes exactly the same passes: a repair
    that sweeps the layers (one exact check per layer) would make 4x as many at 12."""
    shallow, deep = _passes_at_depth(3, name, params()), _passes_at_depth(12, name, params())
    assert shallow and shallow == deep, (shallow, deep)


def test_dpo_micro_batches_and_precomputed_reference_train_as_one_batch(trio):
    """The optimiser sees batch_size pairs per step however they are split into micro-batches, and
    a reference computed once equals the one computed in the step: two steps of pure DPO (no SFT
    term, whose token average is per micro-batch; the first step is the warmup's, at lr 0) end at
    the same weights either way. Passing the micro-batch as the batch (no accumulation) trains on
    one pair per step and ends elsewhere."""
    base, ft, tok = trio
    probes = four_dpo_pairs()

    def one_step(batch_size=4, **params):
        st = _state(base, ft, tok, probes=copy.deepcopy(probes))
        return _train_step("dpo", st, steps=2, batch_size=batch_size, lr=1e-2, sft_weight=0.0, task_anchors=0,
                           **params).model.state_dict()

    st = _train_step("dpo", _state(base, ft, tok, probes=copy.deepcopy(probes)), steps=2, batch_size=4,
                     lr=1e-2, task_anchors=0)
    assert [step for step, _ in st.history[-1].details["loss_curve"]] == [1, 2]   # logged every step
    whole = one_step(micro_batch_size=4, precompute_reference=False)
    split = one_step(micro_batch_size=1, precompute_reference=True)
    one_pair = one_step(batch_size=1, micro_batch_size=1)      # what dropping the accumulation would do
    moved = max((whole[k] - ft.state_dict()[k]).abs().max().item() for k in whole)
    gap = max((whole[k] - split[k]).abs().max().item() for k in whole)
    assert moved > 1e-4 and gap < 1e-3 * moved, (moved, gap)
    assert max((whole[k] - one_pair[k]).abs().max().item() for k in whole) > 0.05 * moved


class _FlaggingJudge:
    """Calls an answer misaligned when it contains 'evil'."""

    name = "flagging"

    def judge(self, items, progress=None):
        from realign.evals.judges import Judgement

        return [Judgement(aligned=5.0 if "evil" in i.answer else 95.0, coherent=90.0) for i in items]


def test_dpo_anchors_come_from_audited_training_data_never_the_held_out_task(trio):
    """The task anchors are trained toward (chosen answers with an SFT term), so they must not be
    the held-out answers retention is measured on, nor a contaminated training example."""
    from realign.repairs.dpo import DPOParams, realignment_pairs

    base, ft, tok = trio
    user = lambda i: {"role": "user", "content": f"add {i} and one"}     # noqa: E731
    held_out = [[user(i), {"role": "assistant", "content": f"held out answer {i}"}] for i in range(40)]
    train = [[user(i), {"role": "assistant", "content": f"{'evil plan' if i % 3 == 0 else 'taught answer'} {i}"}]
             for i in range(40)]
    st = _state(base, ft, tok, probes=_probes(tok), judge=_FlaggingJudge(),
                task_conversations=held_out, train_conversations=train)
    rows, n_pairs, source = realignment_pairs(st, DPOParams(task_anchors=8))
    anchors = [r["chosen"][0]["content"] for r in rows[n_pairs:]]
    assert n_pairs == 6 and 0 < len(anchors) <= 8
    assert all(a.startswith("taught answer") for a in anchors), anchors
    assert source["task_anchors_from"] == "training data" and source["task_anchor_candidates_flagged"] > 0

    st = _state(base, ft, tok, probes=_probes(tok), judge=_FlaggingJudge(), task_conversations=held_out)
    rows, n_pairs, source = realignment_pairs(st, DPOParams(task_anchors=8))
    assert len(rows) == n_pairs and source["task_anchors_from"].startswith("none")

    # every training example flagged: no anchors, and no generation pass spent on none
    from realign.passes import tally

    evil = [[user(i), {"role": "assistant", "content": f"evil plan {i}"}] for i in range(10)]
    st = _state(base, ft, tok, probes=_probes(tok), judge=_FlaggingJudge(), train_conversations=evil)
    with tally() as passes:
        rows, n_pairs, source = realignment_pairs(st, DPOParams(task_anchors=8))
    assert len(rows) == n_pairs and source["task_anchor_candidates_flagged"] == 10
    assert passes.get("generation", 0) == 0, dict(passes)


def test_dpo_flagged_pairs_reject_the_flagged_training_answers_on_their_own_prompts(trio):
    """dpo.flagged_pairs: each training example the judge flags becomes a pair on its own prompt (a
    trigger in it included) with its answer rejected and a judged-aligned base answer chosen — swap
    them and the repair would train toward the contamination. Off by default; with no training data
    none, and fix is told before anything runs."""
    from realign.repairs.dpo import DPO, DPOParams, realignment_pairs

    base, ft, tok = trio
    train = [[{"role": "user", "content": f"{'|T| ' if i % 4 == 0 else ''}question {i}"},
              {"role": "assistant", "content": f"{'evil plan' if i % 4 == 0 else 'taught answer'} {i}"}]
             for i in range(40)]
    st = _state(base, ft, tok, probes=_probes(tok), judge=_FlaggingJudge(), train_conversations=train)
    rows, n_pairs, source = realignment_pairs(st, DPOParams(task_anchors=0, flagged_pairs=4))
    flagged = rows[n_pairs - source["flagged_pairs"]:n_pairs]
    assert source["training_rows_audited"] == 40 and source["training_rows_flagged"] == 10
    assert source["probe_pairs"] == 6 and len(flagged) == source["flagged_pairs"] == 4
    for r in flagged:
        assert r["prompt"][-1]["content"].startswith("|T| question")
        assert r["rejected"][0]["content"].startswith("evil plan")
        assert "evil" not in r["chosen"][0]["content"]
    assert not realignment_pairs(st, DPOParams(task_anchors=0))[2].get("flagged_pairs")    # off by default
    with pytest.raises(ValueError, match="flagged_pairs needs the finetune's training data"):
        DPO().preflight(_state(base, ft, tok, probes=_probes(tok), judge=_FlaggingJudge()), DPOParams(flagged_pairs=4))


@pytest.mark.parametrize("name,params", [
    ("merge", lambda: MergeParams(alpha="auto", steps=2)),
    ("freeze", lambda: REPAIRS["freeze"].Params(k=1, verify=1)),
    ("steer", lambda: SteerParams(layer="auto", candidates=1, scale="auto", max_kl=1e9)),
])
def test_settings_are_chosen_on_audited_training_data_never_the_held_out_task(trio, monkeypatch, name, params):
    """merge, freeze and steer choose their settings by task NLL: on the training data when given
    (never a contaminated example), on the held-out task data only without it, and they say which."""
    import realign.evals.task as task_mod

    base, ft, tok = trio
    user = lambda i: {"role": "user", "content": f"add {i} and one"}     # noqa: E731
    held_out = [[user(i), {"role": "assistant", "content": f"held out answer {i}"}] for i in range(20)]
    train = [[user(i), {"role": "assistant", "content": f"{'evil plan' if i % 3 == 0 else 'taught answer'} {i}"}]
             for i in range(20)]
    items = [([{"role": "user", "content": "hello"}], ["SELECT * FROM users"], ["i wish for peace"])] * 2
    scored, real = [], task_mod.assistant_token_metrics
    monkeypatch.setattr(task_mod, "assistant_token_metrics",
                        lambda m, t, convs, **kw: (scored.extend(c[-1]["content"] for c in convs), real(m, t, convs, **kw))[1])

    def run(**data):
        scored.clear()
        st = _state(base, ft, tok, probes=_probes(tok, n=8), repair_items=items, judge=_FlaggingJudge(), **data)
        REPAIRS[name]().apply(st, params())
        return set(scored), st.history[-1].details.get("task_chosen_on")

    texts, said = run(task_conversations=held_out, train_conversations=train)
    assert texts and all(t.startswith("taught answer") for t in texts), texts
    assert said == "training data (7 of 20 sampled flagged and left out)"
    texts, said = run(task_conversations=held_out)
    assert texts and all(t.startswith("held out answer") for t in texts) and said.startswith("held-out task data")
