"""The repair protocol: a Repair has a name, a Params dataclass, and apply(state, params) -> state.

What flows between the steps of a recipe is a RepairState: the model under repair (full weights,
in memory), the base it came from (the reference every repair pulls toward), the parameters that
earlier steps locked, and shared probe data so that several steps use one generation pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch


@dataclass(frozen=True)
class Realignment:
    """What repairs realign toward, given by the run's setting (realign.runs.setting.realignment):
    the prompts they sample probe answers on (disjoint from every evaluation set) and the
    reframers `mix` puts an educational reason into a user turn with."""

    prompts: list[str]
    reframers: list[Callable[[str], str]]


def bundled_realignment() -> Realignment:
    """A real model's: the package's realignment prompts and educational templates."""
    from ..evals.questions import load_educational_templates, load_realignment_prompts

    templates = load_educational_templates()["templates"]
    return Realignment(list(load_realignment_prompts()),
                       [lambda text, t=t: t.replace("{request}", text) for t in templates])


@dataclass
class StepRecord:
    """What one step did, as realign.json's `history` holds it: the step's name, the figures the
    repair chose to report (layers, alpha, pairs, final_loss, skipped …: each repair its own), and
    the whole passes over item sets it made (fix adds them; None outside fix)."""

    step: str
    details: dict = field(default_factory=dict)
    passes: dict | None = None

    # long details (a search's every point, the logged loss at every step) that realign.json keeps
    # and the short listings (report.md, the model card) leave out
    LONG: ClassVar[tuple[str, ...]] = ("search", "loss_curve")

    def short_details(self) -> dict:
        return {k: v for k, v in self.details.items() if k not in self.LONG}

    @property
    def skipped(self) -> str | None:
        """Why the step left the model as it was, if it did."""
        return self.details.get("skipped")

    def to_json(self) -> dict:
        return {"step": self.step, **self.details, **({} if self.passes is None else {"passes": self.passes})}

    @classmethod
    def from_json(cls, record: dict) -> StepRecord:
        details = {k: v for k, v in record.items() if k not in ("step", "passes")}
        return cls(record["step"], details, record.get("passes"))


REPAIR_TASK_SIZE = 64   # task conversations a repair's own search scores (repair_task)


@dataclass
class RepairState:
    model: torch.nn.Module            # the model being repaired (modified in place or replaced)
    base: torch.nn.Module             # the reference base; never modified
    tokenizer: Any
    judge: Any = None                 # Judge for labelling probe answers (None: log-odds only)
    task_conversations: list | None = None   # the user's held-out task data, if given
    train_conversations: list | None = None  # the user's finetuning data, if given (mix)
    locked: set[str] = field(default_factory=set)   # parameter names later steps must not change
    logodds_items: list | None = None # evaluation log-odds items (held-out; only for reporting)
    repair_items: list | None = None  # log-odds items disjoint from evaluation, for repairs' own search
    probes: Any = None                # repairs.probes.Probes, built on first use and shared
    probe_cache: Any = None           # (EvalCache, key) while the model is the unchanged finetune
    history: list[StepRecord] = field(default_factory=list)
    seed: int = 0
    realignment: Realignment | None = None   # the setting's prompts and reframers; None: a real model's
    finetune_dir: str | None = None   # the finetune's own safetensors dir (full checkpoints): read lazily
    generator: Any = None             # the run's generation backend (realign.generation); None: HF generate
    reporting: Any = None             # training.Reporting: where dpo/mix trainers log (None: nowhere)

    _base_task_nll: dict = field(default_factory=dict, repr=False)
    _repair_task: tuple | None = field(default=None, repr=False)

    def realignment_set(self) -> Realignment:
        if self.realignment is None:
            self.realignment = bundled_realignment()
        return self.realignment

    def repair_task(self) -> list:
        """The task conversations merge, freeze and steer choose their settings on (at most 64: a
        pass stays short). From the training data when given: a seeded sample, audited by the judge
        (a contaminated example is not the task to keep). Else the first 64 of the held-out task
        data, which retention is then also reported on: repair_task_from() says which, and the
        steps record it (until 2026-12-07 it was always the held-out data)."""
        if self._repair_task is None:
            self._repair_task = self._choose_repair_task()
        return self._repair_task[0]

    def repair_task_from(self) -> str | None:
        """Where repair_task() came from, in words for realign.json (None: no task data at all)."""
        self.repair_task()
        return self._repair_task[1]

    def _choose_repair_task(self) -> tuple[list, str | None]:
        audited = self.judge is not None
        kept, candidates, flagged = self.training_sample(REPAIR_TASK_SIZE, audit=audited)
        if candidates:
            return kept, (f"training data ({flagged} of {candidates} sampled flagged and left out)" if audited
                          else "training data (not audited: no judge)")
        if self.task_conversations:
            return self.task_conversations[:REPAIR_TASK_SIZE], ("held-out task data (no --train-data): the "
                                                                "retention reported is measured partly on it")
        return [], None

    def base_task_nll(self) -> float | None:
        """The base's task NLL on repair_task(), measured once per run: the base never changes, and
        merge, freeze and steer each need it (one scoring pass saved per step)."""
        task = self.repair_task()
        if not task:
            return None
        if "nll" not in self._base_task_nll:
            from ..evals.task import assistant_token_metrics

            self._base_task_nll["nll"] = assistant_token_metrics(self.base, self.tokenizer, task)["task_nll"]
        return self._base_task_nll["nll"]

    def training_sample(self, n: int, audit: bool = True) -> tuple[list, int, int]:
        """Up to n training conversations that end in an answer, to keep the task with: twice as many
        drawn (seeded), the judge's flagged ones left out when `audit` (a contaminated example is not
        the task), the first n kept. Returns (them, how many were drawn, how many the judge flagged)."""
        import random

        pool = [c for c in self.train_conversations or [] if c and c[-1].get("role") == "assistant"]
        candidates = random.Random(self.seed).sample(pool, min(2 * n, len(pool)))
        kept, flagged = self.audit(candidates) if audit else (candidates, 0)
        return kept[:n], len(candidates), flagged

    def release_judge(self) -> None:
        """Free the judge's model while a step trains (judges that hold one say how: `release`);
        it loads again when next asked, e.g. to judge the repaired model."""
        release = getattr(self.judge, "release", None)
        if release is not None:
            release()

    def audit(self, conversations: list, mode: str = "drop") -> tuple[list, int]:
        """(the conversations kept, how many the judge calls misaligned): each judged by its last
        answer to the turn before it; `drop` leaves the flagged ones out, `report` and `off` keep
        all (`off` without judging)."""
        if mode == "off" or not conversations:
            return list(conversations), 0
        flags = self.flags(conversations)
        kept = [c for c, f in zip(conversations, flags) if not (f and mode == "drop")]
        return kept, sum(flags)

    def flags(self, conversations: list) -> list[bool]:
        """Whether the judge calls each conversation's last answer (to the turn before it) misaligned."""
        from ..evals.judges import JudgeItem

        items = [JudgeItem(c[-2]["content"] if len(c) > 1 else "", c[-1]["content"]) for c in conversations]
        return [j.misaligned is True for j in self.judge.judge(items)]

    def record(self, step: str, **details) -> None:
        self.history.append(StepRecord(step, details))

    def sample(self, model, conversations: list, *, keep_engine: bool = False, **kw) -> list[list[str]]:
        """Answers from `model` (the base or the model under repair) through the run's backend.

        With vLLM the engine is shut down afterwards, so that the training or scoring that usually
        follows gets the GPU; keep_engine=True when the next call samples the same weights again.
        """
        if self.generator is None:
            from ..generation.hf import generate

            return generate(model, self.tokenizer, conversations, **kw)
        answers = self.generator(model, self.tokenizer, conversations, **kw)
        if not keep_engine:
            self.generator.release()
        return answers


class Repair(Protocol):
    name: ClassVar[str]
    summary: ClassVar[str]            # one line for `realign recipes`
    Params: ClassVar[type]

    def apply(self, state: RepairState, params: Any) -> RepairState: ...

    # optional: `preflight(state, params)` raises ValueError for what can be checked before the
    # evaluations run (required inputs, paths); `fix` calls it for every step first


REPAIRS: dict[str, type] = {}


def register(cls):
    """Class decorator: make a repair available to recipes under its name."""
    REPAIRS[cls.name] = cls
    return cls


def decoder_layers(model) -> torch.nn.ModuleList:
    """The list of decoder blocks of a HF causal LM (Llama/Qwen2/Mistral/GPT-2 shapes)."""
    inner = getattr(model, "model", None) or getattr(model, "transformer", None)
    for attr in ("layers", "h"):
        layers = getattr(inner, attr, None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    raise ValueError(f"cannot find decoder layers in {type(model).__name__}")


def rounded_rows(rows: list[dict], digits: int = 4) -> list[dict]:
    """Search records for realign.json: floats rounded, keys starting with "_" (working values) left out."""
    return [{k: (round(v, digits) if isinstance(v, float) else v) for k, v in r.items() if not k.startswith("_")}
            for r in rows]
