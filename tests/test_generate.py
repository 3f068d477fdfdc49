"""Generation stops on the model's own end-of-turn tokens, not only the tokenizer's eos."""

from __future__ import annotations

from tiny_models import bigram_model, bpe_tokenizer

from realign.evals.generate import generate, stop_token_ids


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
