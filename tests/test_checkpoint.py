"""Model loading: full dirs, LoRA adapters, and a one-line error for each bad input."""

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from realign.model_io.checkpoint import LoadOptions, load_pair
from realign.errors import RealignError

from tiny_models import save_tiny


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    base = save_tiny(root / "base", "llama")
    save_tiny(root / "ft", "llama", seed=1)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))
    peft.peft_config["default"].base_model_name_or_path = str(base)
    peft.save_pretrained(root / "adapter")
    return root


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_full_dirs_of_each_architecture_load(tmp_path, arch):
    path = save_tiny(tmp_path / arch, arch)
    pair = load_pair(str(path))
    assert pair.kind == "full" and pair.base is None
    assert pair.tokenizer.chat_template


def test_adapter_loads_with_its_base_and_merges(dirs):
    pair = load_pair(str(dirs / "adapter"))
    assert pair.kind == "lora" and pair.base_ref == str(dirs / "base")
    ids = torch.tensor([[1, 2, 3]])
    assert not torch.allclose(pair.finetune(ids).logits, pair.base(ids).logits)
    # the base copy is untouched by the merge
    fresh = AutoModelForCausalLM.from_pretrained(dirs / "base")
    torch.testing.assert_close(pair.base(ids).logits, fresh(ids).logits)


def test_full_finetune_with_base(dirs):
    pair = load_pair(str(dirs / "ft"), str(dirs / "base"))
    assert pair.kind == "full" and pair.base is not None


def _error(*args, **kw) -> str:
    with pytest.raises(RealignError) as e:
        load_pair(*args, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_path(tmp_path):
    assert "does not exist" in _error(str(tmp_path / "nope"))


def test_directory_that_is_not_a_model(tmp_path):
    assert "not a model" in _error(str(tmp_path))


def test_adapter_whose_base_is_missing(dirs, tmp_path):
    bad = tmp_path / "adapter"
    bad.mkdir()
    cfg = json.loads((dirs / "adapter" / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "gone")
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    (bad / "adapter_model.safetensors").write_bytes((dirs / "adapter" / "adapter_model.safetensors").read_bytes())
    msg = _error(str(bad))
    assert "does not exist" in msg and "--base" in msg


def test_adapter_on_a_base_of_another_shape(dirs, tmp_path):
    other = save_tiny(tmp_path / "wide", "llama", hidden=48)
    assert "does not fit base" in _error(str(dirs / "adapter"), str(other))


def test_tokenizer_without_chat_template(tmp_path):
    path = save_tiny(tmp_path / "plain", "llama", chat_template=None)
    assert "chat template" in _error(str(path))


def test_pickle_only_weights_need_permission(tmp_path):
    path = save_tiny(tmp_path / "pkl", "llama")
    model = AutoModelForCausalLM.from_pretrained(path)
    (path / "model.safetensors").unlink()
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    assert "--allow-pickle" in _error(str(path))
    assert load_pair(str(path), opts=LoadOptions(allow_pickle=True)).kind == "full"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_quantization_needs_cuda(dirs):
    assert "CUDA" in _error(str(dirs / "ft"), opts=LoadOptions(load_in_4bit=True))
