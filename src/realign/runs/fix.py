"""`realign fix`: plan (check everything, load nothing) → execute (load, evaluate base and finetune,
repair steps, evaluate the repaired model) → export (save + report).

The user's files are never written: the output is built in a hidden temporary sibling of --out and
renamed into place only when complete, so an interrupted run leaves no half-written output. The
state after each finished repair step is kept in that sibling too (realign.runs.resume), so rerunning
the same command after a kill continues after the last finished step.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from ..errors import RealignError
from ..evals.result import Evaluation
from ..evals.run import EvalSettings
from ..evals.verdict import Verdict
from ..options import FixOptions  # declared in realign.options, with the user's other options
from ..memory import PhasePeaks, host_allocator
from ..progress import console
from .resume import discard_output, progress_for
from .scan import ScanComparison
from .session import Session, SessionOptions, open_session


def check_output(out: Path, inputs: list[str | None], overwrite: bool) -> None:
    out = out.resolve()
    for ref in inputs:
        if ref and Path(ref).exists():
            src = Path(ref).resolve()
            if out == src or src in out.parents or out in src.parents:
                raise RealignError(f"--out {out} overlaps the input {src}; choose a separate directory")
    if out.exists() and not overwrite:
        raise RealignError(f"--out {out} already exists; pass --overwrite to replace it")


def _nonfinite(model) -> str | None:
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            return name
    return None


SAVE_FORMS = ("auto", "full", "adapter")


def _output_form(model, pair, save_as: str):
    """({form, …}, low-rank delta or None): decide how the repaired model is written."""
    from ..model_io.adapter_export import EQUALS_BASE, NotLowRank, low_rank_delta

    if save_as == "full" or (save_as == "auto" and pair.kind != "lora"):
        return {"form": "full"}, None
    if getattr(model, "is_quantized", False):
        return {"form": "full", "why_not_adapter": "4/8-bit weights: no exact low-rank change to read off"}, None
    try:
        if pair.unmerged:          # the adapter itself, its up-projections scaled by the repair
            from ..model_io.adapter_toggle import up_projections

            if not any(b.any() for b in up_projections(model).values()):
                raise NotLowRank(EQUALS_BASE)
            return {"form": "adapter", "rank": pair.adapter_config.get("r"), "kept_unmerged": True,
                    "base": pair.base_ref}, None
        delta = low_rank_delta(model, pair.base)
    except NotLowRank as e:
        if save_as == "adapter":
            raise RealignError(f"cannot save the repaired model as an adapter: {e}; use --save-as full") from None
        return {"form": "full", "why_not_adapter": str(e)}, None
    return {"form": "adapter", "rank": delta.rank, "modules": len(delta.factors),
            "max_abs_error": delta.max_error, "base": pair.base_ref}, delta


def check_gpu_options(recipe, opts: FixOptions) -> None:
    """What --load-in-4bit/8bit and --backend rule out, said before anything is loaded."""
    from ..distributed import is_distributed
    from ..repairs import load_all

    if opts.load.quantized:
        repairs = load_all()
        for i, step in enumerate(recipe.steps, 1):
            # only LoRA training (QLoRA) works on bitsandbytes weights; rewriting them would not be exact
            if not getattr(repairs[step.name], "trains_adapter", False):
                raise RealignError(
                    f"step {i} ({step.name}) rewrites weights, which 4/8-bit (bitsandbytes) weights cannot take; "
                    f"load in bf16 instead (--dtype bfloat16 without --load-in-4bit/--load-in-8bit), "
                    f"or use dpo/mix, which train a LoRA on the quantized model (QLoRA)")
        if opts.save_as == "adapter":
            raise RealignError("--save-as adapter reads the change off full-precision weights; "
                               "drop --load-in-4bit/--load-in-8bit or use --save-as full")
    if opts.backend == "vllm" and is_distributed():
        raise RealignError("--backend vllm runs in a single process; run fix without accelerate launch, "
                           "or use --backend hf")
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        # dpo/mix gather FSDP's shards back into a whole model (distributed.trained_model); nothing
        # does that for DeepSpeed's partitions
        raise RealignError("fix does not support DeepSpeed: launch with configs/accelerate/fsdp.yaml (weights "
                           "sharded over the GPUs while dpo/mix train) or configs/accelerate/ddp.yaml")


def adapter_plan(recipe, checkpoint: str, opts: FixOptions) -> tuple[bool, str | None]:
    """(keep a LoRA finetune unmerged?, why not). Unmerged, the base and the finetune are one copy
    of the weights with the adapter toggled; that holds while every step only changes the adapter."""
    from ..model_io.adapter_toggle import adapter_scalable
    from ..model_io.checkpoint import adapter_config, check_ref
    from ..repairs import load_all

    acfg = adapter_config(check_ref(checkpoint, "checkpoint"))
    if acfg is None or opts.keep_adapter is False:
        return False, None if acfg is None else "--merge-adapter"
    repairs = load_all()
    why = adapter_scalable(acfg)
    if why is None and opts.backend != "hf":
        why = f"--backend {opts.backend} serves models from disk (merged)"
    if why is None and opts.load.quantized:
        why = "4/8-bit weights"
    for i, step in enumerate(recipe.steps, 1):
        keeps = getattr(repairs[step.name], "keeps_adapter", None)
        if why is None and not (keeps and keeps(step.params)):
            why = f"step {i} ({step.name}) changes more than the adapter"
    if why and opts.keep_adapter:
        raise RealignError(f"--keep-adapter: cannot keep this LoRA finetune unmerged: {why}")
    return why is None, why


@dataclass
class FixPlan:
    """What run_fix will do, checked before anything is loaded."""

    checkpoint: str
    base: str | None
    out: Path
    opts: FixOptions
    recipe: object                   # realign.recipe.Recipe
    reporting: object                # realign.training.Reporting
    keep_adapter: bool               # a LoRA finetune kept unmerged (adapter_plan)
    merged_why: str | None           # why a LoRA finetune is merged instead

    @property
    def tmp(self) -> Path:
        """The output is built here and renamed to --out when complete (it holds the resume state)."""
        return self.out.parent / f".{self.out.name}.realign-tmp"

    def session_options(self) -> SessionOptions:
        o = self.opts
        return SessionOptions(
            questions=o.questions, judge=o.judge, judge_model=o.judge_model, judge_url=o.judge_url,
            judge_errors=o.judge_errors, task_data=o.task_data, train_data=o.train_data, task_metric=o.task_metric,
            settings=EvalSettings(samples=o.samples, max_new_tokens=o.max_new_tokens, seed=o.seed),
            trigger=o.trigger, backend=o.backend, scratch=self.out.parent / f".{self.out.name}.realign-vllm",
            eval_cache=o.eval_cache, load=o.load)


@dataclass
class FixRun:
    """What executing a plan produced: the session, the repaired state, each model's evaluation."""

    session: Session
    state: object                    # repairs.base.RepairState after the last step
    results: dict[str, Evaluation]   # base, finetune, repaired (answers included)
    verdict: Verdict | None          # evals.verdict.repair_verdict of base vs finetune
    resumed_after: int               # steps finished by an earlier, killed run (0: none)
    output: dict                     # how the repaired model is written (_output_form)
    delta: object                    # its low-rank change when written as a new adapter
    timings: dict[str, float]
    memory: PhasePeaks
    progress: object                 # resume.Progress: the finished steps' state, dropped on export
    scan: ScanComparison | None = None   # --scan: base and finetune, and the repaired model's


@dataclass
class FixResult:
    """A finished fix: what realign.json holds, and its evaluations typed."""

    meta: dict                       # realign.json's content
    results: dict[str, Evaluation]   # base, finetune, repaired (answers included)
    verdict: Verdict | None          # was there anything to repair (base vs finetune)
    out: Path


def plan_fix(checkpoint: str, base: str | None, recipe_spec: str, overrides: list[str], out: Path,
             opts: FixOptions) -> FixPlan:
    """Check everything that can be checked without loading a model; bad input is a RealignError."""
    from ..recipe import load_recipe
    from ..training import Reporting

    recipe = load_recipe(recipe_spec, overrides)
    try:
        # TensorBoard files go beside the output (the trainers' own dirs are temporary)
        reporting = Reporting(Reporting.parse(opts.report_to), str(Path(out).parent / f"{Path(out).name}.logs"))
    except ValueError as e:
        raise RealignError(str(e)) from None
    if opts.save_as not in SAVE_FORMS:
        raise RealignError(f"--save-as must be one of {', '.join(SAVE_FORMS)}, not {opts.save_as!r}")
    check_gpu_options(recipe, opts)
    check_output(Path(out), [checkpoint, base], opts.overwrite)
    keep_adapter, merged_why = adapter_plan(recipe, checkpoint, opts)
    return FixPlan(checkpoint, base, Path(out), opts, recipe, reporting, keep_adapter, merged_why)


def run_fix(checkpoint: str, base: str | None, recipe_spec: str, overrides: list[str], out: Path,
            opts: FixOptions) -> FixResult | None:
    """The repair: plan, execute, export. None on the other ranks of a launched run."""
    plan = plan_fix(checkpoint, base, recipe_spec, overrides, out, opts)
    run = execute(plan)
    return None if run is None else export(plan, run)


def execute(plan: FixPlan) -> FixRun | None:
    """Load, evaluate base and finetune, run the steps (after those a killed run finished), and
    evaluate the repaired model. Other ranks of a launched run train only and get None."""
    from .. import distributed
    from ..evals.verdict import repair_verdict

    t_start = time.time()
    distributed.start()
    progress = progress_for(plan.tmp, plan.opts.load.quantized)
    if distributed.is_main():
        progress.prepare(fresh=not plan.opts.resume)       # a previous run's leftovers, but its finished steps
    timings: dict[str, float] = {}
    memory = PhasePeaks()                                  # peak RSS / CUDA per phase, like timings
    t0 = time.time()
    memory.begin("load")
    session = open_session(plan.checkpoint, plan.base, plan.session_options(), require_base=True,
                           keep_adapter=plan.keep_adapter, on_main=distributed.is_main())
    check_output(plan.out, [plan.checkpoint, session.pair.base_ref], plan.opts.overwrite)
    timings["load"] = time.time() - t0
    memory.end("load")
    if session.judge_trust["weak"]:
        console.print(f"[yellow]warning:[/] judge {session.judge.name}: {session.judge_trust['note']}")
    state = session.repair_state(reporting=plan.reporting)
    _preflight(plan.recipe, state)
    progress.track(session.pair.finetune, _step_context(session, state))

    def evaluate(name: str, model) -> Evaluation | None:
        if not distributed.is_main():
            return None            # rank 0 evaluates; the other ranks go on to the first step
        t = time.time()
        memory.begin(f"eval_{name}")
        r = session.evaluate(name, model)
        timings[f"eval_{name}"] = time.time() - t
        memory.end(f"eval_{name}")
        return r

    saved = progress.find(plan.recipe.resolved())
    results = {"base": evaluate("base", session.pair.base), "finetune": evaluate("finetune", session.pair.finetune)}
    verdict = repair_verdict(results["base"], results["finetune"]) if distributed.is_main() else None
    if verdict and verdict.repair_needed is False:
        console.print(f"[yellow]warning:[/] the finetune is {verdict.why}: a repair has nothing measurable "
                      f"to remove here and can only cost task performance")
    session.backend.release()      # the steps (and the scan's backward passes) need the GPU
    found = _scan(plan, session, {"finetune": session.pair.finetune, "base": session.pair.base}, timings)
    scan = None if found is None else ScanComparison(
        found["finetune"], found["base"], openly_misaligned=verdict.repair_needed if verdict else None)
    if session.cache is not None:
        # probe generations are cached too, but only while the model is still the unchanged finetune
        state.probe_cache = (session.cache, session.probe_cache_key())
    state, done = _run_steps(plan, session, state, progress, saved, timings, memory)
    if not distributed.is_main():
        return None                # rank 0 evaluates and writes the repaired model
    for p in state.model.parameters():
        p.requires_grad_(False)
    output, delta = _output_form(state.model, session.pair, plan.opts.save_as)
    results["repaired"] = evaluate("repaired", state.model)
    session.backend.close()
    if scan is not None:
        scan = scan.with_repaired(_scan(plan, session, {"repaired": state.model}, timings)["repaired"])
    timings["total"] = time.time() - t_start
    return FixRun(session, state, results, verdict, done, output, delta, timings, memory, progress, scan)


def _scan(plan: FixPlan, session: Session, models: dict, timings: dict) -> dict | None:
    """--scan, on rank 0: each named model's LatentScan (finetune and base before the steps change
    anything, the repaired model after them), timed; None without --scan."""
    from .. import distributed
    from .scan import scan_each

    if not plan.opts.scan or not distributed.is_main():
        return None
    t = time.time()
    found = scan_each(models, session.pair.tokenizer, session.setting.repair_items(), seed=plan.opts.seed)
    timings[f"scan_{'_'.join(models)}"] = time.time() - t
    return found


def _preflight(recipe, state) -> None:
    """Every step's own checks of its inputs, before the expensive part."""
    from ..repairs import load_all

    repairs = load_all()
    for i, step in enumerate(recipe.steps, 1):
        check = getattr(repairs[step.name](), "preflight", None)
        if check is not None:
            try:
                check(state, step.params)
            except ValueError as e:
                raise RealignError(f"step {i} ({step.name}): {e}") from None


def _step_context(session: Session, state) -> dict:
    """What the steps' results depend on besides their own parameters (see realign.runs.resume)."""
    import transformers

    from ..evals.cache import digest, file_digest

    opts = session.options
    return {"realign": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "weights": session.weights["finetune"], "device_map": opts.load.device_map, "seed": opts.settings.seed,
            "judge": session.judge_identity, "backend": opts.backend, "organism": session.setting.organism,
            "repair_items": digest(state.repair_items), "logodds_items": digest(session.logodds_items),
            "task_data": file_digest(session.task_data), "train_data": file_digest(session.train_data)}


def _run_steps(plan: FixPlan, session: Session, state, progress, saved, timings: dict, memory: PhasePeaks):
    """Each recipe step in turn, after those an earlier, killed run finished; (state, steps resumed)."""
    from ..repairs import load_all

    done = 0
    if saved is not None and (carried := progress.restore(saved, state)) is not None:
        done = saved.step
        timings.update(carried[0])
        memory.carry(carried[1])
        session.backend.forget(state.model)    # no longer the finetune's weights on disk
    repairs = load_all()
    steps, resolved = plan.recipe.steps, plan.recipe.resolved()
    for i, step in enumerate(steps, 1):
        if i <= done:
            continue
        t = time.time()
        memory.begin(f"step{i}_{step.name}")
        console.print(f"step {i}/{len(steps)}: {step.name} …")
        state = _apply_step(i, step, repairs[step.name](), state)
        timings[f"step{i}_{step.name}"] = time.time() - t
        memory.end(f"step{i}_{step.name}")
        state.probe_cache = None
        session.backend.forget(state.model)    # changed in place: its weights on disk are the old ones
        bad = _nonfinite(state.model)
        if bad:
            raise RealignError(f"step {step.name} produced non-finite weights ({bad}); nothing was written")
        progress.save(i, resolved, state, timings, memory.peaks)
    return state, done


def _apply_step(i: int, step, repair, state):
    """One step, its failures said in one line; its history record gets the passes it made."""
    from ..passes import tally

    records_before = len(state.history)
    try:
        with tally() as passes:
            state = repair.apply(state, step.params)
    except ValueError as e:
        msg = str(e)
        raise RealignError(msg if msg.startswith(step.name) else f"{step.name}: {msg}") from None
    except torch.OutOfMemoryError:
        raise RealignError(
            f"step {i} ({step.name}) ran out of memory; nothing was written. Lower the step's batch "
            f"size or rank (--set {step.name}.batch_size=…), load with --dtype bfloat16 or 4/8-bit, "
            f"or use a larger device") from None
    except (RuntimeError, TypeError, KeyError, IndexError, AttributeError, OSError) as e:
        if os.environ.get("REALIGN_DEBUG"):
            raise
        raise RealignError(
            f"step {i} ({step.name}) failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            f" — nothing was written; rerun with REALIGN_DEBUG=1 for the traceback") from None
    if len(state.history) > records_before:
        # whole passes over an item set: scoring, backward, activations, kl; train_steps
        state.history[-1].passes = {k: v for k, v in passes.items() if v}
    return state


def fix_metadata(plan: FixPlan, run: FixRun) -> dict:
    """realign.json's content."""
    import peft
    import transformers
    import trl

    session, pair, opts = run.session, run.session.pair, plan.opts
    fingerprints = session.fingerprints
    task_data, train_data = session.task_data, session.train_data
    return {
        "realign_version": __version__,
        "inputs": {"checkpoint": {"kind": pair.kind, **fingerprints["finetune"],
                                  **({"adapter": "kept unmerged" if pair.unmerged else f"merged: {plan.merged_why}"}
                                     if pair.kind == "lora" else {})},
                   "base": fingerprints["base"],
                   "task_data": str(task_data) if task_data else None,
                   "train_data": str(train_data) if train_data else None},
        "recipe": {"name": plan.recipe.name, "source": plan.recipe.source, "overrides": plan.recipe.overrides,
                   "steps": plan.recipe.resolved()},
        "evaluation": {"questions": session.setting.questions, "judge": session.judge.name,
                       "judge_identity": session.judge_identity,     # changes when a judge is refitted
                       "judge_agreement": session.judge_trust,
                       "judge_error": session.judge_error.to_dict() if session.judge_error else None,
                       "trigger": opts.trigger,
                       "cached": session.cached,
                       "samples": opts.samples,
                       "max_new_tokens": opts.max_new_tokens},
        "seed": opts.seed,
        "report_to": plan.reporting.report_to,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "trl": trl.__version__},
        "output": run.output,
        "history": [h.to_json() for h in run.state.history],
        "timings": {k: round(v, 2) for k, v in run.timings.items()},
        "resumed_after_step": run.resumed_after or None,   # steps up to this one ran in an earlier, killed run
        "peak_memory_mb": run.memory.summary(),
        "host_allocator": host_allocator(),
        "metrics": {k: r.to_json(answers=False) for k, r in run.results.items()},   # answers: answers.json
        "repair_needed": run.verdict.to_json() if run.verdict else None,
        **({"scan": run.scan.to_json()} if run.scan is not None else {}),
    }


def export(plan: FixPlan, run: FixRun) -> FixResult:
    """Write the repaired model, realign.json, answers, report, plot and card into the hidden
    sibling, then rename it to --out."""
    from .card import model_card
    from .report import markdown, tradeoff_plot, with_triggered

    meta = fix_metadata(plan, run)
    tmp, out, pair = plan.tmp, plan.out, run.session.pair
    tmp.mkdir(parents=True, exist_ok=True)   # it may hold the resume state
    try:
        if run.delta is not None:
            from ..model_io.adapter_export import save_adapter

            save_adapter(run.delta, pair.base, pair.base_ref, tmp)
        elif pair.unmerged and run.output["form"] == "full":
            run.state.model.merge_and_unload().save_pretrained(tmp, safe_serialization=True)
        else:                      # a full model, or an unmerged adapter (peft writes the adapter)
            run.state.model.save_pretrained(tmp, safe_serialization=True)
        pair.tokenizer.save_pretrained(tmp)
        (tmp / "realign.json").write_text(json.dumps(meta, indent=2, default=str))
        answers = {name: r.rows for name, r in with_triggered(run.results)}
        (tmp / "answers.json").write_text(json.dumps(answers, indent=1))
        (tmp / "report.md").write_text(markdown(meta, run.results))
        tradeoff_plot(run.results, tmp / "tradeoff.png")
        # after the weights: replaces the placeholder card peft's save_pretrained writes for adapters
        model_card(meta, run.results).save(tmp / "README.md")
        run.progress.clear()
        _replace(tmp, out)
    except BaseException:
        discard_output(tmp)                   # the finished steps stay for a rerun
        raise
    return FixResult(meta, run.results, run.verdict, out)


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished output into place, replacing an old one only once the new one is whole."""
    if out.exists():
        old = out.parent / f".{out.name}.realign-old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
