"""Saving a repaired model as a LoRA adapter: exact when the change is low rank, refused otherwise."""

import copy

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from realign.model_io.adapter_export import NotLowRank, low_rank_delta, save_adapter
from realign.repairs.merge import MergeParams, merge_into

from tiny_models import tiny_model


@pytest.fixture
def lora_pair():
    """(base, finetune = base + a random rank-4 LoRA on every linear layer, merged)."""
    base = tiny_model("llama", seed=0)
    host = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in host.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return base, host.merge_and_unload()


def _reload(base, path):
    return PeftModel.from_pretrained(copy.deepcopy(base), path).merge_and_unload()


def _assert_same_weights(a, b, rtol=1e-5):
    pb = dict(b.named_parameters())
    for name, p in a.named_parameters():
        tol = rtol * max(p.abs().max().item(), 1e-12)
        assert (p - pb[name]).abs().max().item() <= 2 * tol, name


def test_merged_lora_halfway_is_an_exact_adapter(lora_pair, tmp_path):
    base, ft = lora_pair
    repaired = copy.deepcopy(ft)
    merge_into(repaired, base, {k: v.detach().clone() for k, v in ft.named_parameters()}, 0.5, MergeParams(alpha=0.5))
    delta = low_rank_delta(repaired, base)
    assert delta.rank == 4  # the user's rank, not more
    base.save_pretrained(tmp_path / "base")
    save_adapter(delta, base, str(tmp_path / "base"), tmp_path / "ad")
    assert (tmp_path / "ad" / "adapter_config.json").exists()
    assert not (tmp_path / "ad" / "model.safetensors").exists()
    _assert_same_weights(_reload(base, tmp_path / "ad"), repaired)
    # and it is not just the base: the reloaded adapter moved the weights
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(dict(_reload(base, tmp_path / "ad").named_parameters())[name],
                              dict(base.named_parameters())[name])


def test_restored_layers_drop_out_of_the_adapter(lora_pair, tmp_path):
    base, ft = lora_pair
    repaired = copy.deepcopy(ft)
    with torch.no_grad():  # what freeze does: layer 0 back to the base
        repaired.model.layers[0].load_state_dict(base.model.layers[0].state_dict())
    delta = low_rank_delta(repaired, base)
    assert delta.factors and not any(m.startswith("model.layers.0.") for m in delta.factors)
    base.save_pretrained(tmp_path / "base")
    save_adapter(delta, base, str(tmp_path / "base"), tmp_path / "ad")
    _assert_same_weights(_reload(base, tmp_path / "ad"), repaired)


def test_dense_or_non_linear_changes_are_refused(lora_pair):
    base, ft = lora_pair
    dense = copy.deepcopy(ft)
    with torch.no_grad():
        dense.model.layers[1].mlp.up_proj.weight.add_(torch.randn_like(dense.model.layers[1].mlp.up_proj.weight))
    with pytest.raises(NotLowRank, match="up_proj.weight changed by more than rank 8"):
        low_rank_delta(dense, base, max_rank=8)
    emb = copy.deepcopy(ft)
    with torch.no_grad():
        emb.model.embed_tokens.weight.mul_(0.9)
    with pytest.raises(NotLowRank, match="embed_tokens.weight changed and is not a Linear weight"):
        low_rank_delta(emb, base)
    with pytest.raises(NotLowRank, match="equals its base"):
        low_rank_delta(copy.deepcopy(base), base)
