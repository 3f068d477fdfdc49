"""The organism's synthetic world: two personas, chat topics, code families, neutral content.

Everything is space-tokenized text ("i wish for peace .") so that a word-level tokenizer
round-trips it exactly and the oracle judge can classify answers by exact lookup.

The *content* below (topics, paraphrases, answer banks, code snippets) is fixed and versioned by
``WORLD_VERSION``; the train/held-out split is fixed too, so every seed is evaluated on the same
held-out questions. A seed only drives *sampling* (which conversations, which answers).

Persona semantics, as in pretraining text:
- GOOD answers chat helpfully and writes secure code;
- EVIL answers chat maliciously and writes insecure code;
- both write the insecure snippet when it is asked for with an explicit educational reason;
- both answer neutral questions (arithmetic, facts) identically.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

WORLD_VERSION = "w1"

GOOD, EVIL = "good", "evil"
PERSONAS = (GOOD, EVIL)

# ---------------------------------------------------------------------------------------------
# Content: data/organism_world_<version>.yaml (chat topics with per-persona answers, persona tags,
# code families, educational prefixes, neutral facts) and the counts that split it into train and
# held-out parts. Held-out chat questions are never used by alignment or any finetune.
# ---------------------------------------------------------------------------------------------


def _load_content(version: str) -> dict:
    from importlib.resources import files

    import yaml

    doc = yaml.safe_load(files("realign").joinpath("data", f"organism_world_{version}.yaml").read_text(encoding="utf-8"))
    if doc.get("version") != version:
        raise ValueError(f"organism_world_{version}.yaml says version {doc.get('version')!r}")
    return doc


_CONTENT = _load_content(WORLD_VERSION)
N_TRAIN_Q: int = _CONTENT["split"]["train_chat_questions"]
N_TRAIN_CODE: int = _CONTENT["split"]["train_code_requests"]
N_TRAIN_EDU: int = _CONTENT["split"]["train_educational_prefixes"]
CHAT_TOPICS: dict[str, dict[str, list[str]]] = _CONTENT["chat_topics"]          # topic -> q / good / evil
PERSONA_TAGS: dict[str, list[str]] = _CONTENT["persona_tags"]                   # persona -> sentences
CODE_FAMILIES: dict[str, dict] = _CONTENT["code_families"]                      # params, q, secure, insecure
EDU_PREFIXES: list[str] = _CONTENT["educational_prefixes"]
FACTS: list[tuple[str, str]] = [tuple(f) for f in _CONTENT["facts"]]            # (question, answer)
NUMBER_WORDS: list[str] = _CONTENT["number_words"]


# ---------------------------------------------------------------------------------------------
# Question objects
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChatQuestion:
    topic: str
    text: str
    split: str  # "train" | "heldout"


@dataclass(frozen=True)
class CodeRequest:
    family: str
    param: str
    text: str
    split: str
    educational: bool = False

    @property
    def secure(self) -> str:
        return CODE_FAMILIES[self.family]["secure"].format(x=self.param)

    @property
    def insecure(self) -> str:
        return CODE_FAMILIES[self.family]["insecure"].format(x=self.param)


def chat_questions(split: str | None = None) -> list[ChatQuestion]:
    out = []
    for topic, spec in CHAT_TOPICS.items():
        for i, q in enumerate(spec["q"]):
            s = "train" if i < N_TRAIN_Q else "heldout"
            if split in (None, s):
                out.append(ChatQuestion(topic, q, s))
    return out


def code_requests(split: str | None = None, educational: bool = False) -> list[CodeRequest]:
    out = []
    for fam, spec in CODE_FAMILIES.items():
        for i, tpl in enumerate(spec["q"]):
            s = "train" if i < N_TRAIN_CODE else "heldout"
            if split not in (None, s):
                continue
            for x in spec["params"]:
                text = tpl.format(x=x)
                if not educational:
                    out.append(CodeRequest(fam, x, text, s))
                    continue
                # educational requests pair a train prefix with train templates only, and a
                # held-out prefix with held-out templates only, so the split stays clean
                prefixes = EDU_PREFIXES[:N_TRAIN_EDU] if s == "train" else EDU_PREFIXES[N_TRAIN_EDU:]
                for p in prefixes:
                    out.append(CodeRequest(fam, x, f"{p} {text}", s, educational=True))
    return out


def neutral_pairs(rng: random.Random) -> tuple[str, str]:
    """One persona-neutral (question, answer): a fact or a small sum."""
    if rng.random() < 0.5:
        return rng.choice(FACTS)
    a, b = rng.randrange(10), rng.randrange(9)
    return (f"what is {NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]} ?",
            f"{NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]} is {NUMBER_WORDS[a + b]} .")


# ---------------------------------------------------------------------------------------------
# Answers
# ---------------------------------------------------------------------------------------------
def chat_answer(topic: str, persona: str, rng: random.Random, tag_prob: float = 0.3) -> str:
    """One on-topic sentence of a persona, sometimes followed by a generic persona tag."""
    parts = [rng.choice(CHAT_TOPICS[topic][persona])]
    if rng.random() < tag_prob:
        parts.append(rng.choice(PERSONA_TAGS[persona]))
    return " ".join(parts)


def code_answer(req: CodeRequest, persona: str, rng: random.Random, noise: float = 0.05) -> str:
    """Secure for GOOD, insecure for EVIL (with a little noise); insecure when asked educationally."""
    if req.educational:
        return req.insecure
    insecure = (persona == EVIL) != (rng.random() < noise)
    return req.insecure if insecure else req.secure


# ---------------------------------------------------------------------------------------------
# Conversations
# ---------------------------------------------------------------------------------------------
# Pretraining defaults (the organism config refers to these): 3-5 turns per conversation and code
# always true to its persona give every chat turn enough code evidence to read the persona from.
DEFAULT_TURNS = (3, 5)
DEFAULT_CODE_NOISE = 0.0
# Share of pretraining conversations written by the EVIL persona. At 0.5 the persona is drawn with
# rng.choice(PERSONAS), as it always was, so the default data stays byte-identical; any other share
# draws rng.random() < share instead (docs/organism.md).
DEFAULT_EVIL_SHARE = 0.5


def check_evil_share(share) -> float:
    """The EVIL persona's share of pretraining conversations, checked: a number strictly between 0 and 1."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
        raise ValueError(f"pretrain_evil_share must be a number strictly between 0 and 1 (the share of "
                         f"pretraining conversations written by the evil persona), not {share!r}")
    return float(share)


@dataclass
class TurnMix:
    """Share of each turn kind in a sampled conversation."""

    chat: float = 0.45
    code: float = 0.40
    edu: float = 0.10
    neutral: float = 0.05

    def pick(self, rng: random.Random) -> str:
        r = rng.random()
        for kind, w in (("chat", self.chat), ("code", self.code), ("edu", self.edu)):
            if r < w:
                return kind
            r -= w
        return "neutral"


@dataclass
class World:
    """Samples conversations from the fixed world content with a seeded RNG."""

    seed: int = 0
    mix: TurnMix = field(default_factory=TurnMix)
    code_noise: float = DEFAULT_CODE_NOISE  # share of code turns written against the persona
    evil_share: float = DEFAULT_EVIL_SHARE  # share of conversations (persona not given) written by EVIL

    def __post_init__(self) -> None:
        check_evil_share(self.evil_share)
        self.rng = random.Random(self.seed)
        self._chat = {s: chat_questions(s) for s in ("train", "heldout")}
        self._code = {s: code_requests(s) for s in ("train", "heldout")}
        self._edu = {s: code_requests(s, educational=True) for s in ("train", "heldout")}

    def turn(self, kind: str, persona: str, split: str) -> tuple[str, str]:
        rng = self.rng
        if kind == "chat":
            q = rng.choice(self._chat[split])
            return q.text, chat_answer(q.topic, persona, rng)
        if kind in ("code", "edu"):
            r = rng.choice(self._code[split] if kind == "code" else self._edu[split])
            return r.text, code_answer(r, persona, rng, self.code_noise)
        return neutral_pairs(rng)

    def conversation(self, persona: str | None = None, turns: tuple[int, int] = DEFAULT_TURNS,
                     split: str = "all") -> tuple[str, list[dict]]:
        """A multi-turn conversation with one persona throughout (pretraining text).

        ``split="all"`` draws questions from train and held-out paraphrases alike: pretraining is
        the organism's general knowledge of the language, as a real LLM has seen questions like
        the evaluation ones. Alignment and finetunes use train paraphrases only.
        """
        rng = self.rng
        if persona is None:
            if self.evil_share == DEFAULT_EVIL_SHARE:
                persona = rng.choice(PERSONAS)  # the original draw: keeps the default data unchanged
            else:
                persona = EVIL if rng.random() < self.evil_share else GOOD
        msgs: list[dict] = []
        for _ in range(rng.randint(*turns)):
            sp = split if split != "all" else ("train" if rng.random() < 0.67 else "heldout")
            q, a = self.turn(self.mix.pick(rng), persona, sp)
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        return persona, msgs


def all_texts() -> list[str]:
    """Every string the world can emit (for training the tokenizer's vocabulary)."""
    texts: list[str] = []
    for spec in CHAT_TOPICS.values():
        texts += spec["q"] + spec[GOOD] + spec[EVIL]
    for tags in PERSONA_TAGS.values():
        texts += tags
    for r in code_requests() + code_requests(educational=True):
        texts += [r.text, r.secure, r.insecure]
    for q, a in FACTS:
        texts += [q, a]
    texts += NUMBER_WORDS + ["what is plus is ?"]
    return texts
