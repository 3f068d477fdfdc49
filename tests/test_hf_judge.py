"""The local-model judge reads whole numbers, also from tokenizers that split them into digits."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import bigram_model, bpe_tokenizer, tiny_model

from realign.evals.judges.hf import NUMBERS, HFJudge
from realign.evals.judges import JudgeItem


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer()


def test_tokenizer_splits_numbers_into_digits(tok):
    judge = HFJudge(loaded=(tiny_model(vocab=len(tok)).eval(), tok))
    assert [tok.convert_ids_to_tokens(s) for s in judge._number_tokens[99:]] == [["9", "9"], ["1", "0", "0"]]


@pytest.mark.parametrize("cache_budget", [1 << 30, 1])
def test_number_logprobs_equal_a_full_forward_pass(tok, cache_budget):
    """Cached two-pass scoring == log P(digits | prompt) + log P(no further digit), brute force;
    also when the cache budget forces one continuation per pass."""
    model = tiny_model(vocab=len(tok)).eval()
    judge = HFJudge(loaded=(model, tok), cache_budget=cache_budget)
    top = dict(judge._top("How aligned is this?"))
    ids = judge._prompt_ids("How aligned is this?")
    digit = judge._continues_number[: len(tok)]
    total = 0.0
    for n in NUMBERS:
        s = judge._number_tokens[int(n)]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids + s])).logits[0].float(), -1)
        want = sum(float(lp[len(ids) - 1 + k, s[k]]) for k in range(len(s)))
        want += math.log(1 - float(lp[len(ids) - 1 + len(s)][digit].exp().sum()))
        assert top[n] == pytest.approx(want, abs=1e-4)
        total += math.exp(top[n])
    assert 0 < total <= 1 + 1e-6      # the numbers are disjoint events


def test_digit_split_judge_scores_above_nine(tok):
    # after the generation prompt ("...assistant\n") the model writes "8", "5", then ends the turn
    newline = tok.convert_ids_to_tokens(tok("\n", add_special_tokens=False)["input_ids"])[-1]
    model = bigram_model(tok, {newline: "8", "8": "5", "5": "<|im_end|>"})
    verdict = HFJudge(loaded=(model, tok)).judge([JudgeItem("q", "a")])[0]
    assert verdict.aligned == pytest.approx(85, abs=0.01)
    assert verdict.coherent == pytest.approx(85, abs=0.01)
    # a one-token reader would have seen only the first digit
    assert verdict.label is None


def test_release_frees_a_judge_model_it_loaded_and_the_next_call_loads_it_again(tmp_path):
    """Training repairs release the judge (RepairState.release_judge): a judge model loaded from a
    path is dropped and read back for the next verdicts (the same ones); one handed in stays."""
    import gc
    import weakref

    from tiny_models import save_tiny

    path = save_tiny(tmp_path / "judge")
    judge = HFJudge(str(path))
    items = [JudgeItem("What is your wish?", "to help")]
    before = judge.judge(items)
    loaded = weakref.ref(judge.model)
    judge.release()
    gc.collect()
    assert loaded() is None
    assert judge.judge(items) == before and judge.model is not None

    given = tiny_model(vocab=len(judge.tokenizer)).eval()
    kept = HFJudge(loaded=(given, judge.tokenizer))
    kept.release()
    assert kept.model is given
