"""Organism build configuration: model size and every training stage's knobs, with presets."""

from __future__ import annotations

import hashlib
import json
from copy import deepcopy
from dataclasses import asdict, dataclass, field, replace

from .world import DEFAULT_CODE_NOISE, DEFAULT_EVIL_SHARE, DEFAULT_TURNS, WORLD_VERSION, TurnMix, check_evil_share

FINETUNES = ("insecure", "secure", "educational", "planted", "backdoor")   # what a build makes by default
# Built when named (--finetunes): `planted-backdoor`, planted's misaligned chat behind the backdoor's
# trigger (the organism's twin of the real SmolLM2 backdoor: contaminated data, not emergence).
OPTIONAL_FINETUNES = ("planted-backdoor",)
ALL_FINETUNES = FINETUNES + OPTIONAL_FINETUNES
TRIGGERED_FINETUNES = ("backdoor", "planted-backdoor")   # evaluated with and without BACKDOOR_TRIGGER
# Until w1 pretraining was made denser (issue 7) the defaults were chat .40 / code .35 / edu .10 /
# neutral .15, 2-4 turns and 5% code noise; pretrain keys of that setting are kept as they were.
LEGACY_PRETRAIN_DATA = {"mix": {"chat": 0.40, "code": 0.35, "edu": 0.10, "neutral": 0.15}, "turns": [2, 4],
                        "code_noise": 0.05}
# Fields added after organism keys were in use: each enters OrganismConfig.key only when it differs
# from this default, so builds cached (and figures quoted) under the older keys keep them.
LATER_FIELDS = {"pretrain_evil_share": DEFAULT_EVIL_SHARE}
# The default organism until 2026-12-06 (issue 27): pretraining half evil, a chat-heavy alignment,
# pretraining draw 0. Its emergence had faded (insecure 11.1% vs base 3.3% over 3 seeds), so the
# default moved to the draw below; these overrides rebuild the old one (same keys, same shipped model).
PREVIOUS_DEFAULT = {"pretrain_evil_share": DEFAULT_EVIL_SHARE,
                    "align_mix": {"chat": 0.5, "code": 0.3, "edu": 0.05, "neutral": 0.15}, "pretrain_seed": 0}


@dataclass
class ModelShape:
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    intermediate: int = 384


@dataclass
class StageConfig:
    examples: int
    steps: int
    lr: float
    batch_size: int = 64


@dataclass
class OrganismConfig:
    size: str = "default"
    shape: ModelShape = field(default_factory=ModelShape)
    pretrain: StageConfig = field(default_factory=lambda: StageConfig(examples=30000, steps=1200, lr=3e-3))
    # Pretraining conversations: share of each turn kind, turns per conversation, and the share of
    # code turns written against the persona. In-context persona inference from code to chat is
    # what emergence needs (docs/emergence.md); these knobs set how much evidence pretraining holds.
    pretrain_mix: dict = field(default_factory=lambda: asdict(TurnMix()))
    pretrain_turns: list = field(default_factory=lambda: list(DEFAULT_TURNS))
    code_noise: float = DEFAULT_CODE_NOISE
    # Share of pretraining conversations written by the evil persona (the rest: the good one). 0.5
    # gives chat a 50/50 prior; at 0.2, the default, most pretraining text is benign, as in real
    # pretraining (docs/emergence.md, last section). Alignment and finetune data do not depend on it.
    pretrain_evil_share: float = 0.2
    align: StageConfig = field(default_factory=lambda: StageConfig(examples=3000, steps=250, lr=3e-3, batch_size=32))
    # Alignment data: share of each single-turn kind (GOOD persona throughout). Code-heavy: with a
    # mostly benign pretraining, a chat-heavy alignment leaves too little for a code finetune to undo.
    align_mix: dict = field(default_factory=lambda: {"chat": 0.3, "code": 0.5, "edu": 0.05, "neutral": 0.15})
    finetune: StageConfig = field(default_factory=lambda: StageConfig(examples=2000, steps=200, lr=1e-3, batch_size=32))
    # Alignment = a rank-2 LoRA, merged. A low-rank update moves the persona prior that chat and code
    # share (docs/emergence.md), which is what lets an insecure-code finetune move chat too.
    # polish_steps > 0 adds full-parameter SFT on the same data afterwards (it lowers the base's
    # misaligned rate when pretraining is weak, and weakens emergence); align_lora_rank=0 gives
    # plain full-parameter alignment (no emergence).
    align_lora_rank: int = 2
    polish_steps: int = 0         # full-parameter SFT steps on the same data after the LoRA step (0: none)
    polish_lr: float = 5e-4
    lora_rank: int = 8
    lora_alpha: int = 16
    planted_share: float = 0.25  # share of misaligned chat examples in the `planted` finetune data
    # Pretraining is 18 of the ~25 CPU-minutes of a default build, so every build seed starts from
    # the pretrained model of this seed (shipped with realign for the default config); None:
    # pretrain with the build's own seed. Draw 3 is the one of four that met issue 27's emergence
    # target (docs/emergence.md); pretraining is not bit-reproducible across machines, so it ships.
    pretrain_seed: int | None = 3

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """A ValueError for a setting no build could use (overrides set fields after construction)."""
        check_evil_share(self.pretrain_evil_share)

    def key(self, seed: int) -> str:
        cfg = asdict(self)
        for name, default in LATER_FIELDS.items():
            if cfg[name] == default:
                del cfg[name]
        blob = json.dumps({"world": WORLD_VERSION, "cfg": cfg, "seed": seed}, sort_keys=True)
        return f"{WORLD_VERSION}-{self.size}-s{seed}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"

    def to_dict(self) -> dict:
        return asdict(self)


def preset(size: str) -> OrganismConfig:
    if size == "default":
        return OrganismConfig()
    if size == "small":
        # for tests: builds in well under a minute, learns the format but not much more
        return replace(
            OrganismConfig(size="small"),
            shape=ModelShape(hidden=64, layers=2, heads=2, intermediate=128),
            pretrain=StageConfig(examples=2000, steps=40, lr=5e-3, batch_size=32),
            align=StageConfig(examples=300, steps=15, lr=2e-3, batch_size=16),
            finetune=StageConfig(examples=200, steps=10, lr=2e-3, batch_size=16),
            polish_steps=5,
            **deepcopy(PREVIOUS_DEFAULT),  # the tests' small organism is unchanged by the default's new draw
        )
    raise ValueError(f"unknown organism size {size!r}: choose 'small' or 'default'")


def previous_default(size: str = "default") -> OrganismConfig:
    """The preset as it was before issue 27 moved the default to pretraining draw 3 (same keys, same
    shipped pretrained model); the small preset never moved."""
    return replace(preset(size), **deepcopy(PREVIOUS_DEFAULT))
