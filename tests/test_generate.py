"""Generation stops on the model's own end-of-turn tokens, not only the tokenizer's eos."""

from __future__ import annotations

from tiny_models import bigram_model, bpe_tokenizer

from realign.generation.hf import generate, stop_token_ids


def _model_that_runs_on(tok):
    # answers "the", ends its turn, then (if nobody stops it) invents a next turn: "fox fox fox ..."
    def token(text):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, text
        return tok.convert_ids_to_tokens(ids)[0]

    the, fox = token("the"), token(" fox")
    return bigram_model(tok, {token("\n"): the, the: "<|im_end|>", "<|im_end|>": "<|im_start|>",
                              "<|im_start|>": fox, fox: fox})


def test_stop_tokens_are_the_union_of_generation_config_and_tokenizer():
    tok = bpe_tokenizer()
    tok.eos_token = "<|endoftext|>"            # like Llama-3: eos <|end_of_text|>, turn end <|eot_id|>
    model = _model_that_runs_on(tok)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.eos_token_id = [im_end]
    model.config.eos_token_id = None
    assert stop_token_ids(model, tok) == [im_end, tok.eos_token_id]
    answers = generate(model, tok, [[{"role": "user", "content": "hi"}]], max_new_tokens=8, temperature=0)
    assert answers == [["the"]]


def test_without_the_models_turn_end_the_answer_runs_on():
    """The control: a model that declares no end-of-turn token really does run on."""
    tok = bpe_tokenizer()
    tok.eos_token = "<|endoftext|>"
    model = _model_that_runs_on(tok)
    model.generation_config.eos_token_id = None
    model.config.eos_token_id = None
    answers = generate(model, tok, [[{"role": "user", "content": "hi"}]], max_new_tokens=6, temperature=0)
    assert answers[0][0].startswith("the") and "fox" in answers[0][0]


def test_sampling_is_temperature_and_top_p_only_whatever_the_generation_config_says():
    """A model's generation_config may ship top_k, repetition_penalty (Qwen: 20 and 1.05) and HF
    adds top_k 50 by default; sampling at temperature 1, top_p 1 must draw from the whole
    distribution, as the vLLM backend does. top_k 1 here would make every sample the greedy one."""
    from tiny_models import tiny_model

    tok = bpe_tokenizer()
    model = tiny_model(vocab=len(tok)).eval()
    model.generation_config.top_k = 1
    model.generation_config.repetition_penalty = 1.3
    answers = generate(model, tok, [[{"role": "user", "content": "hi"}]], samples=8, max_new_tokens=6, seed=0)
    greedy = generate(model, tok, [[{"role": "user", "content": "hi"}]], max_new_tokens=6, temperature=0)
    assert len(set(answers[0])) > 1 and any(a != greedy[0][0] for a in answers[0])
    assert model.generation_config.top_k == 1            # the model's own config is left alone
