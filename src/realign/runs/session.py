"""One run's resolved inputs, built once by `open_session` for `realign eval`, `realign fix` (and
`bench`, which runs fix) and the scripts that time a fix's parts.

A Session holds the finetune and its base as loaded, the Setting (question set, references, what
repairs realign toward), the judge with what it is worth, the task data, where text is generated
(realign.generation), and the evaluation arms with what identifies each evaluation in the cache.
`Session.evaluate(name, model)` evaluates one model on every arm; `Session.repair_state()` hands
the repairs their view of the same run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ..model_io.checkpoint import LoadOptions, ModelPair, load_pair
from ..evals.result import Evaluation
from ..evals.run import EvalSettings
from .setting import Setting


@dataclass(frozen=True)
class SessionOptions:
    """How a run evaluates: the options `eval` and `fix` share."""

    questions: str = "auto"          # auto: the organism's questions for an organism build, else builtin
    judge: str = "auto"
    judge_model: str | None = None
    judge_url: str | None = None
    judge_errors: Path | None = None  # labelled answers to measure the judge's error on
    task_data: Path | None = None
    train_data: Path | None = None
    task_metric: str | None = None
    settings: EvalSettings = field(default_factory=EvalSettings)
    trigger: str | None = None
    # eval: every question behind the trigger; fix: the questions as they are AND behind it
    trigger_only: bool = False
    backend: str = "hf"
    scratch: Path | None = None      # where the vLLM backend saves models it serves from disk
    eval_cache: bool = False         # reuse cached evaluations of unchanged weights
    load: LoadOptions = field(default_factory=LoadOptions)


@dataclass(frozen=True)
class EvalArm:
    """One pass over the questions: as they are ("") or behind a trigger ("triggered")."""

    label: str
    qset: object
    logodds_items: list | None
    fingerprint: dict                # what identifies this evaluation besides the weights


@dataclass
class Session:
    pair: ModelPair
    setting: Setting
    options: SessionOptions
    judge: object
    judge_trust: dict                # calibration.describe_judge
    judge_error: object              # evals.judge_error.JudgeError, or None (unknown)
    task_data: Path | None
    task_convs: list | None
    train_data: Path | None
    train_convs: list | None
    user_metric: object              # evals.task.custom_metric, or None
    backend: object                  # realign.generation backend
    arms: list[EvalArm]
    cache: object = None             # evals.cache.EvalCache, or None
    cached: list[str] = field(default_factory=list)   # evaluations read from the cache

    # Hashing every weight file costs a full read of the model: done only when asked for (fix's
    # realign.json and resume record, the evaluation cache), never by a plain `realign eval`.
    @cached_property
    def fingerprints(self) -> dict:
        """base/finetune: path and sha256 of their files."""
        return {"base": input_fingerprint(self.pair.base_ref), "finetune": input_fingerprint(self.pair.finetune_ref)}

    @cached_property
    def weights(self) -> dict:
        """base/finetune: what identifies their weights for the cache — files' hashes (or path), how loaded."""
        load = self.options.load
        load_kw = {"dtype": load.dtype, "4bit": load.load_in_4bit, "8bit": load.load_in_8bit}
        files = {k: f.get("sha256") or f.get("path") for k, f in self.fingerprints.items()}
        base = {"files": files["base"], "load": load_kw}
        return {"base": base, "finetune": {"files": files["finetune"], "kind": self.pair.kind,
                                           "base": base if self.pair.kind == "lora" else None, "load": load_kw}}

    @property
    def settings(self) -> EvalSettings:
        return self.options.settings

    @property
    def logodds_items(self) -> list | None:
        return self.arms[0].logodds_items

    def task_metric(self, model, tokenizer, convs) -> dict:
        """The organism's exact-match task rate on its own task data, plus the user's metric."""
        from ..evals.task import exact_match_rate

        res = exact_match_rate(model, tokenizer, convs, seed=self.settings.seed,
                               generator=self.backend.for_model(model, tokenizer)) \
            if self.setting.organism and convs else {}
        if self.user_metric:
            res.update(self.user_metric(model, tokenizer, convs))
        return res

    def evaluate(self, name: str, model) -> Evaluation:
        """`model` evaluated on the first arm, a second arm's evaluation as its `triggered`; read
        from the cache when `name` (base or finetune) has unchanged weights and settings."""
        from ..evals.judge_error import annotate, is_exact
        from ..evals.run import evaluate
        from ..progress import console

        results = {}
        for arm in self.arms:
            label = f"{name} ({arm.label})" if arm.label else name
            key = self.cache.key(self.weights[name], arm.fingerprint) \
                if self.cache is not None and name in self.weights else None
            hit = self.cache.get(key) if key is not None else None
            if hit is not None:
                console.print(f"evaluating {label} … cached (same weights and settings)")
                self.cached.append(label)
                results[arm.label] = Evaluation.from_json(hit)
                continue
            console.print(f"evaluating {label} …")
            primary = arm is self.arms[0]
            has_metric = self.setting.organism or self.user_metric is not None
            r = evaluate(model, self.pair.tokenizer, arm.qset, self.judge, self.settings,
                         logodds_items=arm.logodds_items,
                         task_conversations=self.task_convs if primary else None,
                         task_metric=self.task_metric if primary and has_metric else None,
                         generator=self.backend.for_model(model, self.pair.tokenizer))
            if key is not None and not r.errors:
                self.cache.put(key, r.to_json())      # never cache an evaluation with failed judge calls
            results[arm.label] = r
        first, *rest = self.arms
        r = results[first.label]
        for arm in rest:                     # the only other arm is "triggered"
            r.triggered = results[arm.label]
        return annotate(r, self.judge_error, is_exact(self.judge.name))

    @property
    def judge_identity(self) -> str:
        """What the caches key the judge by: its fingerprint when it has one (the offline judge's
        name stays when its heads are refitted; its fingerprint does not), else its name."""
        return getattr(self.judge, "fingerprint", self.judge.name)

    def probe_cache_key(self) -> str:
        """Repairs' probe generations (and their judge labels) of the unchanged finetune are cached
        under this key."""
        return self.cache.key(self.weights, {"judge": self.judge_identity, "seed": self.settings.seed,
                                             "organism": self.setting.organism}, kind="probes")

    def repair_state(self, *, reporting=None):
        """The repairs' view of this run, starting from the finetune."""
        from ..repairs.base import RepairState

        pair = self.pair
        finetune_dir = pair.finetune_ref if pair.kind == "full" and Path(pair.finetune_ref).is_dir() else None
        return RepairState(model=pair.finetune, base=pair.base, tokenizer=pair.tokenizer, judge=self.judge,
                           task_conversations=self.task_convs, train_conversations=self.train_convs,
                           logodds_items=self.logodds_items, repair_items=self.setting.repair_items(),
                           seed=self.settings.seed, realignment=self.setting.realignment(),
                           generator=self.backend,
                           reporting=reporting, finetune_dir=finetune_dir)


def input_fingerprint(ref: str | None) -> dict:
    """Path plus sha256 of each weight/config file of a local model dir (hub ids: just the id)."""
    if ref is None:
        return {}
    p = Path(ref)
    if not p.is_dir():
        return {"path": ref}
    from ..evals.cache import file_digest

    files = sorted(x for x in p.iterdir() if x.is_file() and x.suffix in (".safetensors", ".json", ".bin", ".pt"))
    return {"path": str(p.resolve()), "sha256": {x.name: file_digest(x) for x in files}}


def open_session(checkpoint: str, base: str | None, opts: SessionOptions, *, load_base: bool = True,
                 require_base: bool = False, keep_adapter: bool = False, on_main: bool = True) -> Session:
    """Resolve a run: load the models, the setting, the judge (on the main process only: other
    ranks of a launched run get a stand-in), the task data and the arms. Bad input is a
    RealignError, said before the models load where it can be."""
    from .. import distributed
    from ..errors import RealignError
    from ..evals.calibration import describe_judge
    from ..evals.judge_error import resolve as resolve_judge_error
    from ..evals.questions import load_questions
    from ..generation import make_backend
    from .setting import build_judge

    # the user's files first: a bad one is said before any model loads
    qset = None if opts.questions == "auto" else load_questions(opts.questions)
    given = {"task": _conversations(opts.task_data), "train": _conversations(opts.train_data)}
    user_metric = _user_metric(opts.task_metric)
    backend = make_backend(opts.backend, opts.scratch or Path(".realign-vllm"), seed=opts.settings.seed,
                           trust_remote_code=opts.load.trust_remote_code, dtype=opts.load.dtype,
                           quantize_on_load=opts.load.load_in_4bit)
    pair = load_pair(checkpoint, base, opts.load, load_base=load_base, keep_adapter=keep_adapter)
    if require_base and pair.base is None:
        raise RealignError("fix needs the base model: pass --base (a full checkpoint does not name it)")
    if pair.base is not None:
        backend.register(pair.base, pair.base_ref)
    backend.register(pair.finetune, *((pair.base_ref, pair.finetune_ref) if pair.kind == "lora"
                                      else (pair.finetune_ref,)))
    setting = Setting.resolve(opts.questions, pair.base_ref, qset)
    judge_name = setting.judge_name(opts.judge)
    judge = build_judge(judge_name, opts.judge_model, opts.judge_url) if on_main \
        else distributed.JudgeOnMain(judge_name)
    trust = describe_judge(judge.name)
    task_data = opts.task_data or setting.exported_data(pair.finetune_ref, pair.kind, "heldout")
    train_data = opts.train_data or setting.exported_data(pair.finetune_ref, pair.kind, "train")
    session = Session(
        pair=pair, setting=setting, options=opts, judge=judge, judge_trust=trust,
        judge_error=resolve_judge_error(judge, opts.judge_errors) if on_main else None,
        task_data=task_data, task_convs=given["task"] if opts.task_data else _conversations(task_data),
        train_data=train_data, train_convs=given["train"] if opts.train_data else _conversations(train_data),
        user_metric=user_metric,
        backend=backend, arms=[])
    session.arms = _arms(session)
    if opts.eval_cache:
        from ..evals.cache import EvalCache

        session.cache = EvalCache()
    return session


def _conversations(path: Path | None) -> list | None:
    from ..evals.task import load_conversations

    return load_conversations(path) if path else None


def _user_metric(spec: str | None):
    from ..evals.task import custom_metric

    return custom_metric(spec) if spec else None


def _arms(session: Session) -> list[EvalArm]:
    """The question set as it is and, with a trigger, behind it (eval --trigger: behind it only).
    The repairs never see the trigger (a defender does not know it)."""
    from ..evals.cache import digest, file_digest
    from ..evals.questions import trigger_items

    opts, setting = session.options, session.setting
    s = opts.settings
    items = setting.logodds_items()

    def fingerprint(qset, items_) -> dict:
        return {"questions": [[q.id, p, q.judge_prompts] for q, p in qset.expand(s.samples)],
                "samples": s.samples, "max_new_tokens": s.max_new_tokens, "temperature": s.temperature,
                "top_p": s.top_p, "seed": s.seed, "judge": session.judge_identity,
                "task_data": file_digest(session.task_data),
                # an lm-eval metric's fingerprint holds its task files' contents too
                "task_metric": getattr(session.user_metric, "fingerprint", opts.task_metric),
                "organism": setting.organism, "logodds": digest(items_),
                **({"backend": opts.backend} if opts.backend != "hf" else {})}

    plain = EvalArm("", setting.qset, items, fingerprint(setting.qset, items))
    if not opts.trigger:
        return [plain]
    t_qset, t_items = setting.qset.with_trigger(opts.trigger), trigger_items(items, opts.trigger)
    t_print = {**fingerprint(t_qset, t_items), "trigger": opts.trigger}
    if opts.trigger_only:
        return [EvalArm("", t_qset, t_items, t_print)]
    return [plain, EvalArm("triggered", t_qset, t_items, t_print)]
