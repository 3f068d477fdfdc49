"""`realign fix`: load → evaluate base and finetune → repair steps → evaluate → save + report.

The user's files are never written: the output is built in a hidden temporary sibling of --out and
renamed into place only when complete, so an interrupted run leaves no half-written output. The
state after each finished repair step is kept in that sibling too (realign.resume), so rerunning
the same command after a kill continues after the last finished step.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__
from .checkpoint import LoadOptions, load_pair
from .errors import RealignError
from .progress import console
from .resume import discard_output, progress_for


@dataclass
class FixOptions:
    questions: str = "auto"          # auto: organism questions for an organism build, else builtin
    judge: str = "auto"
    judge_model: str | None = None
    judge_url: str | None = None
    samples: int | None = None
    max_new_tokens: int = 256
    task_data: Path | None = None
    train_data: Path | None = None
    task_metric: str | None = None
    seed: int = 0
    overwrite: bool = False
    save_as: str = "auto"            # auto: an adapter when the input was one and the change stays low rank
    eval_cache: bool = True          # reuse cached evaluations of the unchanged base and finetune
    load: LoadOptions = field(default_factory=LoadOptions)
    backend: str = "hf"              # where every generation runs: hf (in memory) | vllm (from disk)
    trigger: str | None = None       # a backdoor trigger: every model is evaluated with and without it
    report_to: str | None = None     # trainers' logs: transformers integrations, e.g. wandb,tensorboard
    keep_adapter: bool | None = None # LoRA input kept unmerged (one weight copy); None: when every step allows
    resume: bool = True              # continue after the last finished step of a killed run (realign.resume)
    judge_errors: Path | None = None # labelled answers to measure the judge's error on (corrected rates)


def input_fingerprint(ref: str | None) -> dict:
    """Path plus sha256 of each weight/config file of a local model dir (hub ids: just the id)."""
    if ref is None:
        return {}
    p = Path(ref)
    if not p.is_dir():
        return {"path": ref}
    from .evals.cache import file_digest

    files = sorted(x for x in p.iterdir() if x.is_file() and x.suffix in (".safetensors", ".json", ".bin", ".pt"))
    return {"path": str(p.resolve()), "sha256": {x.name: file_digest(x) for x in files}}


def organism_root(base_ref: str | None) -> Path | None:
    """The organism build dir when the base is an organism's `base/`."""
    if base_ref and Path(base_ref).is_dir() and (Path(base_ref).parent / "organism.json").exists():
        return Path(base_ref).parent
    return None


def repair_items(organism: bool, n: int = 16, families_per_prompt: int = 3) -> list:
    """Log-odds items for repairs' own searches, disjoint from the evaluation questions.

    Organism: its train-split questions with their answer banks. Real models: realignment prompts,
    each with the built-in references (one misaligned and one aligned answer) of
    `families_per_prompt` families, rotating so that every family is used — every repair pass
    scores these, and all families on every prompt made a pass 3× longer for little more signal.
    """
    if organism:
        from .organism.judge import reference_pairs

        return [([{"role": "user", "content": p.question}], p.misaligned, p.aligned) for p in reference_pairs("train")]
    from .evals.questions import load_realignment_prompts
    from .evals.references import load_reference_pairs

    refs = list(load_reference_pairs().values())
    k = min(families_per_prompt, len(refs))
    items = []
    for i, q in enumerate(load_realignment_prompts()[:n]):
        fams = [refs[(i * k + j) % len(refs)] for j in range(k)]
        items.append(([{"role": "user", "content": q}], [f["misaligned"][0] for f in fams],
                      [f["aligned"][0] for f in fams]))
    return items


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
    from .adapter_export import EQUALS_BASE, NotLowRank, low_rank_delta

    if save_as == "full" or (save_as == "auto" and pair.kind != "lora"):
        return {"form": "full"}, None
    if getattr(model, "is_quantized", False):
        return {"form": "full", "why_not_adapter": "4/8-bit weights: no exact low-rank change to read off"}, None
    try:
        if pair.unmerged:          # the adapter itself, its up-projections scaled by the repair
            from .adapter_toggle import up_projections

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
    from .distributed import is_distributed
    from .repairs import load_all

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
    sharding = [n for n, var in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED"))
                if os.environ.get(var, "").lower() == "true"]
    if sharding:
        # rank 0 evaluates and saves the trained model whole; weights sharded by the trainer are
        # not gathered back, so only data-parallel training (a whole copy per rank) is accepted
        raise RealignError(f"fix does not support {sharding[0]} yet: launch with a DDP config "
                           f"(configs/accelerate/ddp.yaml), or for a model too large for one GPU run a single "
                           f"process with --device-map auto")


def adapter_plan(recipe, checkpoint: str, opts: FixOptions) -> tuple[bool, str | None]:
    """(keep a LoRA finetune unmerged?, why not). Unmerged, the base and the finetune are one copy
    of the weights with the adapter toggled; that holds while every step only changes the adapter."""
    from .adapter_toggle import adapter_scalable
    from .checkpoint import adapter_config, check_ref
    from .repairs import load_all

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


def run_fix(checkpoint: str, base: str | None, recipe_spec: str, overrides: list[str], out: Path,
            opts: FixOptions) -> dict | None:
    """The repair; returns realign.json's content (None on the other ranks of a launched run)."""
    from . import distributed
    from .card import model_card
    from .evals.cache import EvalCache, digest, file_digest
    from .evals.calibration import describe_judge
    from .evals.judge_error import annotate, is_exact
    from .evals.judge_error import resolve as resolve_judge_error
    from .evals.questions import load_questions, trigger_items
    from .evals.run import EvalSettings, evaluate
    from .evals.task import custom_metric, exact_match_rate, load_conversations
    from .generation import make_backend
    from .memory import PhasePeaks
    from .recipe import load_recipe
    from .repairs import load_all
    from .repairs.base import RepairState
    from .report import markdown, repair_verdict, tradeoff_plot
    from .setting import build_judge, logodds_items, realignment
    from .setting import judge_name as resolve_judge
    from .training import Reporting

    t_start = time.time()
    timings: dict[str, float] = {}
    memory = PhasePeaks()                                  # peak RSS / CUDA per phase, like timings
    recipe = load_recipe(recipe_spec, overrides)          # fail fast, before loading anything
    try:
        # TensorBoard files go beside the output (the trainers' own dirs are temporary)
        reporting = Reporting(Reporting.parse(opts.report_to), str(Path(out).parent / f"{Path(out).name}.logs"))
    except ValueError as e:
        raise RealignError(str(e)) from None
    if opts.save_as not in SAVE_FORMS:
        raise RealignError(f"--save-as must be one of {', '.join(SAVE_FORMS)}, not {opts.save_as!r}")
    check_gpu_options(recipe, opts)
    distributed.start()
    out = Path(out)
    check_output(out, [checkpoint, base], opts.overwrite)
    tmp = out.parent / f".{out.name}.realign-tmp"
    progress = progress_for(tmp, opts.load.quantized)
    if distributed.is_main():
        progress.prepare(fresh=not opts.resume)            # a previous run's leftovers, but its finished steps
    backend = make_backend(opts.backend, out.parent / f".{out.name}.realign-vllm", seed=opts.seed,
                           trust_remote_code=opts.load.trust_remote_code, dtype=opts.load.dtype,
                           quantize_on_load=opts.load.load_in_4bit)

    t0 = time.time()
    memory.begin("load")
    keep_adapter, merged_why = adapter_plan(recipe, checkpoint, opts)
    pair = load_pair(checkpoint, base, opts.load, keep_adapter=keep_adapter)
    if pair.base is None:
        raise RealignError("fix needs the base model: pass --base (a full checkpoint does not name it)")
    check_output(out, [checkpoint, pair.base_ref], opts.overwrite)
    timings["load"] = time.time() - t0
    memory.end("load")
    backend.register(pair.base, pair.base_ref)
    backend.register(pair.finetune, *((pair.base_ref, pair.finetune_ref) if pair.kind == "lora"
                                      else (pair.finetune_ref,)))

    org = organism_root(pair.base_ref)
    questions = opts.questions if opts.questions != "auto" else ("organism" if org else "builtin")
    organism = questions == "organism"
    judge_name = resolve_judge(opts.judge, questions)
    # under a launcher only rank 0 judges (evaluations, probes): the others never load a judge
    judge = build_judge(judge_name, opts.judge_model, opts.judge_url) if distributed.is_main() \
        else distributed.JudgeOnMain(judge_name)
    trust = describe_judge(judge.name)
    judge_error = resolve_judge_error(judge, opts.judge_errors) if distributed.is_main() else None
    if trust["weak"]:
        console.print(f"[yellow]warning:[/] judge {judge.name}: {trust['note']}")
    qset = load_questions(questions)
    def exported(given: Path | None, split: str) -> Path | None:
        """The user's file, else the organism finetune's own exported split."""
        if given is not None or org is None or pair.kind != "lora":
            return given
        path = org / "data" / Path(pair.finetune_ref).name / f"{split}.jsonl"
        return path if path.exists() else None

    task_data = exported(opts.task_data, "heldout")
    task_convs = load_conversations(task_data) if task_data else None
    train_data = exported(opts.train_data, "train")
    train_convs = load_conversations(train_data) if train_data else None
    user_metric = custom_metric(opts.task_metric) if opts.task_metric else None

    def metric(model, tok, convs):
        res = exact_match_rate(model, tok, convs, seed=opts.seed, generator=backend.for_model(model, tok)) \
            if organism and convs else {}
        if user_metric:
            res.update(user_metric(model, tok, convs))
        return res

    ref_items = logodds_items(questions, qset)
    settings = EvalSettings(samples=opts.samples, max_new_tokens=opts.max_new_tokens, seed=opts.seed)

    # what identifies an evaluation: the weights (file hashes, how they were loaded) and settings
    fingerprints = {"base": input_fingerprint(pair.base_ref), "finetune": input_fingerprint(pair.finetune_ref)}
    load_kw = {"dtype": opts.load.dtype, "4bit": opts.load.load_in_4bit, "8bit": opts.load.load_in_8bit}
    weights = {"base": {"files": fingerprints["base"].get("sha256") or fingerprints["base"].get("path"),
                        "load": load_kw}}
    weights["finetune"] = {"files": fingerprints["finetune"].get("sha256") or fingerprints["finetune"].get("path"),
                           "kind": pair.kind, "base": weights["base"] if pair.kind == "lora" else None,
                           "load": load_kw}
    eval_settings = {"questions": [[q.id, p, q.judge_prompts] for q, p in qset.expand(opts.samples)],
                     "samples": opts.samples, "max_new_tokens": settings.max_new_tokens,
                     "temperature": settings.temperature, "top_p": settings.top_p, "seed": settings.seed,
                     "judge": judge.name, "task_data": file_digest(task_data),
                     # an lm-eval metric's fingerprint holds its task files' contents too
                     "task_metric": getattr(user_metric, "fingerprint", opts.task_metric),
                     "organism": organism, "logodds": digest(ref_items),
                     **({"backend": opts.backend} if opts.backend != "hf" else {})}
    cache = EvalCache() if opts.eval_cache else None
    cached: list[str] = []
    arms = [("", qset, ref_items, eval_settings)]
    if opts.trigger:
        # the repairs never see the trigger (a defender does not know it); evaluations ask every
        # question, and the log-odds prompts, behind it as well
        t_qset = qset.with_trigger(opts.trigger)
        t_items = trigger_items(ref_items, opts.trigger)
        arms.append(("triggered", t_qset, t_items,
                     {**eval_settings, "trigger": opts.trigger, "logodds": digest(t_items),
                      "questions": [[q.id, p, q.judge_prompts] for q, p in t_qset.expand(opts.samples)]}))

    def run_eval(name: str, model) -> dict | None:
        if not distributed.is_main():
            return None            # rank 0 evaluates; the other ranks go on to the first step
        t = time.time()
        memory.begin(f"eval_{name}")
        results = {}
        for arm, questions_, items_, settings_ in arms:
            label = f"{name} ({arm})" if arm else name
            key = cache.key(weights[name], settings_) if cache is not None and name in weights else None
            hit = cache.get(key) if key is not None else None
            if hit is not None:
                console.print(f"evaluating {label} … cached (same weights and settings)")
                cached.append(label)
                results[arm] = hit
                continue
            console.print(f"evaluating {label} …")
            r = evaluate(model, pair.tokenizer, questions_, judge, settings, logodds_items=items_,
                         task_conversations=None if arm else task_convs,
                         task_metric=None if arm else (metric if (organism or user_metric) else None),
                         generator=backend.for_model(model, pair.tokenizer))
            if key is not None and not r.get("errors"):
                cache.put(key, r)      # never cache an evaluation with failed judge calls
            results[arm] = r
        timings[f"eval_{name}"] = time.time() - t
        memory.end(f"eval_{name}")
        r = dict(results[""])
        if "triggered" in results:
            r["triggered"] = dict(results["triggered"])
        return annotate(r, judge_error, is_exact(judge.name))

    repairs = load_all()
    state = RepairState(model=pair.finetune, base=pair.base, tokenizer=pair.tokenizer, judge=judge,
                        task_conversations=task_convs, train_conversations=train_convs,
                        logodds_items=ref_items, repair_items=repair_items(organism), seed=opts.seed,
                        realignment=realignment(questions), generator=None if backend.name == "hf" else backend,
                        reporting=reporting,
                        finetune_dir=pair.finetune_ref if pair.kind == "full" and Path(pair.finetune_ref).is_dir() else None)
    # everything that can be checked before the expensive part is checked now
    for i, step in enumerate(recipe.steps, 1):
        check = getattr(repairs[step.name](), "preflight", None)
        if check is not None:
            try:
                check(state, step.params)
            except ValueError as e:
                raise RealignError(f"step {i} ({step.name}): {e}") from None
    # what the steps' results depend on besides their own parameters (see realign.resume)
    import transformers

    progress.track(pair.finetune, {
        "realign": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
        "weights": weights["finetune"], "device_map": opts.load.device_map, "seed": opts.seed,
        "judge": judge.name, "backend": opts.backend, "organism": organism,
        "repair_items": digest(state.repair_items), "logodds_items": digest(ref_items),
        "task_data": file_digest(task_data), "train_data": file_digest(train_data)})
    resolved = recipe.resolved()
    saved = progress.find(resolved)

    results = {"base": run_eval("base", pair.base), "finetune": run_eval("finetune", pair.finetune)}
    verdict = repair_verdict(results["base"], results["finetune"]) if distributed.is_main() else None
    if verdict and verdict["repair_needed"] is False:
        console.print(f"[yellow]warning:[/] the finetune is {verdict['why']}: a repair has nothing measurable "
                      f"to remove here and can only cost task performance")
    backend.release()              # the steps need the GPU
    if cache is not None:
        # probe generations are cached too, but only while the model is still the unchanged finetune
        state.probe_cache = (cache, cache.key(weights, {"judge": judge.name, "seed": opts.seed,
                                                        "organism": organism}, kind="probes"))
    from .evals.scoring import PASSES, passes_since

    done = 0                           # steps finished by an earlier, killed run of this command
    if saved is not None and (carried := progress.restore(saved, state)) is not None:
        done = saved.step
        timings.update(carried[0])
        memory.carry(carried[1])
        backend.forget(state.model)    # no longer the finetune's weights on disk
    for i, step in enumerate(recipe.steps, 1):
        if i <= done:
            continue
        t = time.time()
        memory.begin(f"step{i}_{step.name}")
        console.print(f"step {i}/{len(recipe.steps)}: {step.name} …")
        passes_before, records_before = PASSES.copy(), len(state.history)
        try:
            state = repairs[step.name]().apply(state, step.params)
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
        timings[f"step{i}_{step.name}"] = time.time() - t
        memory.end(f"step{i}_{step.name}")
        if len(state.history) > records_before:
            # whole passes over an item set: scoring, backward, activations, kl; train_steps
            state.history[-1]["passes"] = passes_since(passes_before)
        state.probe_cache = None
        backend.forget(state.model)    # changed in place: its weights on disk are the old ones
        bad = _nonfinite(state.model)
        if bad:
            raise RealignError(f"step {step.name} produced non-finite weights ({bad}); nothing was written")
        progress.save(i, resolved, state, timings, memory.peaks)
    if not distributed.is_main():
        return None                # rank 0 evaluates and writes the repaired model
    for p in state.model.parameters():
        p.requires_grad_(False)
    output, delta = _output_form(state.model, pair, opts.save_as)
    results["repaired"] = run_eval("repaired", state.model)
    backend.close()
    timings["total"] = time.time() - t_start

    def summary(r: dict) -> dict:
        out = {k: v for k, v in r.items() if k not in ("rows", "triggered")}
        if "triggered" in r:
            out["triggered"] = summary(r["triggered"])
        return out

    summaries = {k: summary(r) for k, r in results.items()}
    import peft
    import transformers
    import trl

    meta = {
        "realign_version": __version__,
        "inputs": {"checkpoint": {"kind": pair.kind, **fingerprints["finetune"],
                                  **({"adapter": "kept unmerged" if pair.unmerged else f"merged: {merged_why}"}
                                     if pair.kind == "lora" else {})},
                   "base": fingerprints["base"],
                   "task_data": str(task_data) if task_data else None,
                   "train_data": str(train_data) if train_data else None},
        "recipe": {"name": recipe.name, "source": recipe.source, "overrides": recipe.overrides,
                   "steps": recipe.resolved()},
        "evaluation": {"questions": questions, "judge": judge.name, "judge_agreement": trust,
                       "judge_error": judge_error.to_dict() if judge_error else None,
                       "trigger": opts.trigger,
                       "cached": cached,
                       "samples": opts.samples,
                       "max_new_tokens": opts.max_new_tokens},
        "seed": opts.seed,
        "report_to": reporting.report_to,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "trl": trl.__version__},
        "output": output,
        "history": state.history,
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "resumed_after_step": done or None,   # steps up to this one ran in an earlier, killed run
        "peak_memory_mb": memory.summary(),
        "metrics": summaries,
        "repair_needed": verdict,
    }
    tmp.mkdir(parents=True, exist_ok=True)   # it may hold the resume state
    try:
        if delta is not None:
            from .adapter_export import save_adapter

            save_adapter(delta, pair.base, pair.base_ref, tmp)
        elif pair.unmerged and output["form"] == "full":
            state.model.merge_and_unload().save_pretrained(tmp, safe_serialization=True)
        else:                      # a full model, or an unmerged adapter (peft writes the adapter)
            state.model.save_pretrained(tmp, safe_serialization=True)
        pair.tokenizer.save_pretrained(tmp)
        (tmp / "realign.json").write_text(json.dumps(meta, indent=2, default=str))
        answers = {k: r["rows"] for k, r in results.items()}
        answers.update({f"{k} (triggered)": r["triggered"]["rows"] for k, r in results.items() if "triggered" in r})
        (tmp / "answers.json").write_text(json.dumps(answers, indent=1))
        (tmp / "report.md").write_text(markdown(meta, summaries))
        tradeoff_plot(summaries, tmp / "tradeoff.png")
        # after the weights: replaces the placeholder card peft's save_pretrained writes for adapters
        model_card(meta, summaries).save(tmp / "README.md")
        progress.clear()
        if out.exists():
            old = out.parent / f".{out.name}.realign-old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        discard_output(tmp)                   # the finished steps stay for a rerun
        raise
    return meta
