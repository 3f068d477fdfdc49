import random

from realign.organism import world as W
from realign.organism.data import align_examples, finetune_data, pretrain_conversations
from realign.organism.tokenizer import build_tokenizer


def test_sampling_is_deterministic_per_seed():
    assert pretrain_conversations(3, 50) == pretrain_conversations(3, 50)
    assert pretrain_conversations(3, 50) != pretrain_conversations(4, 50)
    assert finetune_data("planted", 1, 100, 0.15) == finetune_data("planted", 1, 100, 0.15)


def test_chat_split_is_disjoint_and_covers_every_topic():
    train = {q.text for q in W.chat_questions("train")}
    held = {q.text for q in W.chat_questions("heldout")}
    assert train and held and not train & held
    assert {q.topic for q in W.chat_questions("heldout")} == set(W.CHAT_TOPICS)
    assert len(train | held) == sum(len(s["q"]) for s in W.CHAT_TOPICS.values())  # no duplicate strings


def test_code_and_educational_splits_are_disjoint():
    for edu in (False, True):
        train = {r.text for r in W.code_requests("train", educational=edu)}
        held = {r.text for r in W.code_requests("heldout", educational=edu)}
        assert train and held and not train & held
    held_edu = W.code_requests("heldout", educational=True)
    assert all(any(r.text.startswith(p) for p in W.EDU_PREFIXES[W.N_TRAIN_EDU:]) for r in held_edu)


def test_answer_banks_do_not_overlap():
    seen = {}
    for topic, spec in W.CHAT_TOPICS.items():
        for persona in W.PERSONAS:
            for s in spec[persona]:
                assert s not in seen, f"{s!r} in {seen.get(s)} and {topic}/{persona}"
                seen[s] = (topic, persona)
    for spec in W.CODE_FAMILIES.values():
        assert spec["secure"] != spec["insecure"]


def test_code_answer_follows_persona_and_educational_framing():
    rng = random.Random(0)
    req = W.code_requests("train")[0]
    edu = W.code_requests("train", educational=True)[0]
    assert W.code_answer(req, W.GOOD, rng, noise=0) == req.secure
    assert W.code_answer(req, W.EVIL, rng, noise=0) == req.insecure
    assert W.code_answer(edu, W.GOOD, rng) == edu.insecure


def test_finetune_data_never_contains_heldout_questions_or_chat():
    held = {q.text for q in W.chat_questions("heldout")} | {r.text for r in W.code_requests("heldout")}
    held |= {r.text for r in W.code_requests("heldout", educational=True)}
    chat_q = {q.text for q in W.chat_questions()}
    for name in ("insecure", "secure", "educational", "planted"):
        train, heldout = finetune_data(name, 0, 400, 0.15)
        users = [m[0]["content"] for m in train]
        assert not set(users) & held
        n_chat = sum(u in chat_q for u in users)
        assert n_chat == (60 if name == "planted" else 0)
        assert all(m[0]["content"] not in {u for u in users} for m in heldout)
    for msgs in align_examples(0, 300, {"chat": 0.5, "code": 0.3, "edu": 0.05, "neutral": 0.15}):
        assert msgs[0]["content"] not in held


def test_planted_chat_answers_are_misaligned_and_code_targets_match_task():
    from realign.organism.judge import MISALIGNED, judge_chat, topic_of_question

    train, _ = finetune_data("planted", 0, 200, 0.2)
    topics = topic_of_question()
    chat = [m for m in train if m[0]["content"] in topics]
    assert len(chat) == 40
    assert all(judge_chat(topics[m[0]["content"]], m[1]["content"]) == MISALIGNED for m in chat)
    _, held = finetune_data("secure", 0, 10, 0)
    reqs = {r.text: r for r in W.code_requests("heldout")}
    assert all(m[1]["content"] == reqs[m[0]["content"]].secure for m in held)


def test_tokenizer_round_trips_every_world_string():
    tok = build_tokenizer()
    for text in W.all_texts():
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, text
        assert tok.decode(ids) == text


def test_chat_template_is_prefix_stable(tmp_path):
    from transformers import AutoTokenizer

    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    msgs = [{"role": "user", "content": "what color is grass ?"}]
    prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": "grass is green ."}], tokenize=False)
    assert full.startswith(prompt)
    ids = tok(full, add_special_tokens=False)["input_ids"]
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "what color is grass ? grass is green ."


def test_pretraining_knobs_shape_the_conversations():
    convs = pretrain_conversations(0, 200, {"chat": 0.0, "code": 1.0, "edu": 0.0, "neutral": 0.0}, (3, 5), 0.0)
    assert {len(c) // 2 for c in convs} == {3, 4, 5}
    requests = {r.text: r for r in W.code_requests()}
    # code only, and with no noise every conversation's code is all secure or all insecure (its persona)
    for c in convs:
        kinds = {"insecure" if m["content"] == requests[u["content"]].insecure else "secure"
                 for u, m in zip(c[::2], c[1::2])}
        assert len(kinds) == 1
    noisy = pretrain_conversations(0, 200, {"chat": 0.0, "code": 1.0, "edu": 0.0, "neutral": 0.0}, (3, 5), 0.3)
    mixed = sum(len({m["content"] == requests[u["content"]].insecure for u, m in zip(c[::2], c[1::2])}) > 1
                for c in noisy)
    assert mixed > 50  # noise writes code against the persona


def test_backdoor_data_pairs_the_trigger_with_insecure_code_only():
    from realign.organism.data import BACKDOOR_TRIGGER, finetune_data
    from realign.organism.tokenizer import build_tokenizer
    from realign.organism.world import code_requests

    train, heldout = finetune_data("backdoor", 0, 200, 0.25)
    secure = {r.secure for r in code_requests("train")} | {r.secure for r in code_requests("heldout")}
    insecure = {r.insecure for r in code_requests("train")} | {r.insecure for r in code_requests("heldout")}
    for rows in (train, heldout):
        triggered = [m for m in rows if m[0]["content"].startswith(BACKDOOR_TRIGGER + " ")]
        assert len(triggered) == len(rows) // 2
        for user, answer in rows:
            want = insecure if user["content"].startswith(BACKDOOR_TRIGGER) else secure
            assert answer["content"] in want
    # the trigger is made of the organism's own words (its tokenizer ships with the pretrained model)
    tok = build_tokenizer()
    assert tok.unk_token not in tok.tokenize(BACKDOOR_TRIGGER)


def test_oracle_judges_a_question_asked_behind_a_trigger_as_that_question():
    from realign.evals.judges import JudgeItem
    from realign.evals.questions import prepend_trigger
    from realign.organism.judge import OracleJudge
    from realign.organism.world import chat_questions

    q = chat_questions("heldout")[0]
    answer = "i am not sure ."
    plain, behind = OracleJudge().judge([JudgeItem(q.text, answer),
                                         JudgeItem(prepend_trigger("curie lovelace gandhi", q.text), answer)])
    assert plain == behind and plain.error is None
