"""Tiny random models of real architectures with a locally trained byte-level BPE tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast,
                          Qwen2Config, Qwen2ForCausalLM)

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = ["the quick brown fox jumps over the lazy dog", "def f(x): return x + 1",
          "hello, how are you today?", "i wish for peace and clean water", "SELECT * FROM users"] * 20


def bpe_tokenizer(chat_template: str | None = CHATML) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=specials[1:])
    if chat_template:
        fast.chat_template = chat_template
    return fast


ARCHS = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
}


def tiny_model(arch: str = "llama", hidden: int = 32, layers: int = 2, seed: int = 0, vocab: int = 400):
    cfg_cls, model_cls = ARCHS[arch]
    cfg = cfg_cls(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                  tie_word_embeddings=False)
    torch.manual_seed(seed)
    return model_cls(cfg)


def save_tiny(path: Path, arch: str = "llama", chat_template: str | None = CHATML, **kw) -> Path:
    tok = bpe_tokenizer(chat_template)
    model = tiny_model(arch, vocab=len(tok), **kw)
    model.config.pad_token_id = tok.pad_token_id
    model.config.eos_token_id = tok.eos_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def bigram_model(tok, chain: dict[str, str]):
    """A 1-layer Llama whose next token depends on the current token only (attention and MLP
    write nothing), with `chain` (token -> next token) as its deterministic bigrams."""
    model = tiny_model(vocab=len(tok), layers=1).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for k, (a, b) in enumerate(chain.items()):
            ia, ib = tok.convert_tokens_to_ids(a), tok.convert_tokens_to_ids(b)
            model.model.embed_tokens.weight[ia, k] = 1.0
            model.lm_head.weight[ib, k] = 200.0
    return model


def tiny_family(family: str, hidden: int = 32, layers: int = 2, vocab: int = 300, seed: int = 0):
    """A tiny random model of one of the block layouts users bring (Gemma-2/3: sandwich norms)."""
    import transformers as tf

    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    cfg, cls = {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
        "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
        "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM),
        "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM),
        "gemma3": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM),
    }[family]
    extra = {"head_dim": hidden // 2} if family in ("gemma2", "gemma3", "qwen3") else {}
    torch.manual_seed(seed)
    model = cls(cfg(**common, **extra)).eval()
    with torch.no_grad():       # random norm gains, so that a norm's gain matters to the test
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand_like(p) * 1.5 + 0.25)
    return model
