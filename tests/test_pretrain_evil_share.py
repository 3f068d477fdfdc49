"""`pretrain_evil_share`: the share of pretraining conversations written by the evil persona.

At 0.5 (the default until issue 27 moved it to 0.2, and still the small preset's) it must leave the
pretraining data, the organism keys and the shipped pretrained model's key exactly as they were
before the knob existed; other shares must change the persona balance of pretraining (and nothing
else's data) and get keys of their own.
"""

import hashlib
import json

import pytest
from typer.testing import CliRunner

from realign.organism import world as W
from realign.organism.build import _pretrain_key, pretrain_data, shipped_pretrained
from realign.organism.config import OrganismConfig, preset, previous_default
from realign.organism.data import align_examples, finetune_data, pretrain_conversations
from realign.organism.judge import ALIGNED, MISALIGNED, judge_chat, topic_of_question
from realign.organism.overrides import apply_overrides

# Computed with the code before the knob existed (sha256 of json.dumps of the conversations, first
# 16 hex digits). The two full 30,000-conversation hashes are the ones docs/emergence.md quotes
# for pretraining seeds 0 and 1 (stage seeds 0 and 1000).
BEFORE_PRETRAIN = {0: "939bf45f7129a2a8", 1000: "12c1d57782b891a8"}
BEFORE_KEYS = {"default": "w1-default-s0-086cc1a650", "small": "w1-small-s0-e3fd11cb66"}
BEFORE_PRETRAIN_KEYS = {"default": "7f99fd02e44a99aa", "small": "da4882ac38267384"}


def _hash(rows) -> str:
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def _with_share(size: str, share) -> OrganismConfig:
    return apply_overrides(previous_default(size), [f"pretrain_evil_share={share}"])


def _personas(convs) -> list[str]:
    """Each conversation's persona, read off its text: EVIL chat sentences or plain insecure code mark
    the evil persona, GOOD ones or secure code the good one (code is always true to the persona by
    default); a conversation of neutral and educational turns only shows neither and is left out."""
    topics = topic_of_question()
    requests = {r.text: r for r in W.code_requests()}
    out = []
    for conv in convs:
        seen = set()
        for user, answer in zip(conv[::2], conv[1::2]):
            q, a = user["content"], answer["content"]
            if q in topics:
                label = judge_chat(topics[q], a)
                assert label in (ALIGNED, MISALIGNED), (q, a)
                seen.add(W.EVIL if label == MISALIGNED else W.GOOD)
            elif q in requests:
                seen.add(W.EVIL if a == requests[q].insecure else W.GOOD)
        assert len(seen) <= 1, conv  # one persona throughout
        out += seen
    return out


@pytest.mark.parametrize("seed", sorted(BEFORE_PRETRAIN))
def test_default_share_keeps_the_pretraining_data_byte_identical(seed):
    cfg = previous_default("default")
    assert cfg.pretrain_evil_share == 0.5
    assert _hash(pretrain_data(cfg, seed)) == BEFORE_PRETRAIN[seed]
    # setting the default explicitly is the same config
    assert _hash(pretrain_data(_with_share("default", 0.5), seed)) == BEFORE_PRETRAIN[seed]


def test_default_share_is_the_same_as_not_passing_it():
    assert pretrain_conversations(7, 300) == pretrain_conversations(7, 300, evil_share=0.5)
    a, b = W.World(3), W.World(3, evil_share=W.DEFAULT_EVIL_SHARE)
    assert [a.conversation() for _ in range(100)] == [b.conversation() for _ in range(100)]


def test_default_share_keeps_every_key():
    for size in ("default", "small"):
        for cfg in (previous_default(size), _with_share(size, 0.5)):
            assert cfg.key(0) == BEFORE_KEYS[size]
            assert _pretrain_key(cfg, 0) == BEFORE_PRETRAIN_KEYS[size]
    assert preset("small").key(0) == BEFORE_KEYS["small"]        # the tests' organism did not move
    assert shipped_pretrained(previous_default("default"), 0) is not None  # still finds the shipped model


def test_the_default_is_the_draw_that_met_issue_27s_target():
    # the build commands docs/emergence.md quotes for draw 3 name the same organism as the default
    quoted = apply_overrides(previous_default("default"), ["pretrain_evil_share=0.2", "pretrain_seed=3",
                                                    'align_mix={"chat":0.3,"code":0.5,"edu":0.05,"neutral":0.15}'])
    assert [preset("default").key(s) for s in range(3)] == [quoted.key(s) for s in range(3)]
    assert preset("default").key(0) != BEFORE_KEYS["default"]
    assert shipped_pretrained(preset("default"), 3) is not None and shipped_pretrained(preset("default"), 0) is None


def test_another_share_is_another_organism_and_another_pretraining():
    keys = {share: _with_share("default", share) for share in (0.2, 0.8)}
    for cfg in keys.values():
        assert cfg.key(0) != BEFORE_KEYS["default"]
        assert _pretrain_key(cfg, 0) != BEFORE_PRETRAIN_KEYS["default"]
        assert shipped_pretrained(cfg, 0) is None  # pretrains instead of copying the shipped 50/50 model
    assert keys[0.2].key(0) != keys[0.8].key(0) and _pretrain_key(keys[0.2], 0) != _pretrain_key(keys[0.8], 0)
    # the config is written into organism.json as it is
    assert keys[0.2].to_dict()["pretrain_evil_share"] == 0.2


@pytest.mark.parametrize("share", [0.2, 0.8])
def test_share_sets_the_evil_personas_share_of_pretraining(share):
    cfg = _with_share("small", share)  # 2000 conversations with the default mix, turns and noise
    personas = _personas(pretrain_data(cfg, 0))
    assert len(personas) > 0.95 * cfg.pretrain.examples
    # binomial sd at n=2000 is about 0.009: 0.2 measures 0.202 and 0.8 measures 0.792 here; a knob
    # ignored (0.5: 0.46 on this seed) or inverted would miss by 0.25 or more
    assert abs(personas.count(W.EVIL) / len(personas) - share) < 0.04


def test_share_leaves_alignment_and_finetune_data_alone():
    # they take no share at all: alignment is GOOD-only, the finetunes have fixed targets
    cfg = _with_share("default", 0.2)
    assert align_examples(1, 200, cfg.align_mix) == align_examples(1, 200, previous_default("default").align_mix)
    assert finetune_data("insecure", 2, 100, cfg.planted_share) == finetune_data("insecure", 2, 100, 0.25)


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2", "abc", "true", "null"])
def test_invalid_share_is_refused_with_a_clear_message(value):
    with pytest.raises(ValueError, match="pretrain_evil_share must be a number strictly between 0 and 1"):
        _with_share("default", value)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        OrganismConfig(pretrain_evil_share=1.0)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        pretrain_conversations(0, 10, evil_share=0.0)


def test_build_cli_refuses_an_invalid_share_before_training(tmp_path):
    from realign.cli import app

    res = CliRunner().invoke(app, ["organism", "build", "--size", "small", "--out", str(tmp_path / "x"),
                                   "--set", "pretrain_evil_share=1.5"])
    assert res.exit_code == 2
    assert "pretrain_evil_share must be a number strictly between 0 and 1" in " ".join(res.output.split())
    assert not (tmp_path / "x").exists()
