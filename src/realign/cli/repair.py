"""`realign fix` (repair one finetune), `realign bench` (recipes × finetunes × seeds through fix's
code), `realign push` (a fix output to the Hub) and `realign recipes` (what a recipe can hold)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .common import (AllowPickleOpt, BackendOpt, BaseOpt, CheckpointArg, DtypeOpt, JudgeErrorsOpt, JudgeModelOpt,
                     JudgeOpt, JudgeUrlOpt, MaxTokensOpt, PrivateOpt, QuestionsOpt, ReportToOpt, SamplesOpt, ScanOpt, SetOpt,
                     TaskDataOpt, TaskMetricOpt, TrainDataOpt, TriggerOpt, TrustRemoteCodeOpt, app, comma_list, fail,
                     or_fail, out, print_evaluation, table)

# the options `fix` and `bench` both declare, under FixOptions' own names
SHARED_FIX_OPTIONS = ("questions", "judge", "judge_model", "judge_url", "samples", "max_new_tokens", "task_data",
                      "train_data", "task_metric", "trigger", "judge_errors", "backend", "report_to")


def fix_options(args: dict, load, **own):
    """FixOptions from a command's arguments (`args`: its locals(); the shared options are taken),
    its loading options, and the fields only that command sets (`own`)."""
    from ..runs.fix import FixOptions

    return FixOptions(**{k: args[k] for k in SHARED_FIX_OPTIONS}, load=load, **own)


@app.command("fix")
def fix_cmd(
    checkpoint: CheckpointArg,
    recipe: Annotated[str, typer.Option(help="steps joined by + (freeze+dpo), a bundled recipe name, or FILE.yaml")],
    out_dir: Annotated[Path, typer.Option("--out", help="where the repaired model and report go")],
    base: BaseOpt = None,
    set_: SetOpt = None,
    task_data: TaskDataOpt = None,
    train_data: TrainDataOpt = None,
    task_metric: TaskMetricOpt = None,
    questions: QuestionsOpt = "auto",
    judge: JudgeOpt = "auto",
    judge_model: JudgeModelOpt = None,
    judge_url: JudgeUrlOpt = None,
    samples: SamplesOpt = None,
    max_new_tokens: MaxTokensOpt = 256,
    trigger: TriggerOpt = None,
    judge_errors: JudgeErrorsOpt = None,
    scan: ScanOpt = False,
    seed: Annotated[int, typer.Option(help="seed for sampling, probes and training steps")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing --out")] = False,
    save_as: Annotated[str, typer.Option(help="auto (adapter when the input is one and the repair "
                                              "stays low rank) | full | adapter")] = "auto",
    no_eval_cache: Annotated[bool, typer.Option(
        "--no-eval-cache", help="evaluate base and finetune again instead of reusing cached results")] = False,
    report_to: ReportToOpt = None,
    keep_adapter: Annotated[bool | None, typer.Option(
        "--keep-adapter/--merge-adapter",
        help="a LoRA finetune: keep it unmerged (one copy of the weights, the adapter toggled for the base) "
             "or merge it into a second copy; default: unmerged when every step only changes the adapter "
             "(a linear merge)", show_default=False)] = None,
    no_resume: Annotated[bool, typer.Option(
        "--no-resume", help="start over: drop the steps an earlier, killed run of this command finished "
                            "(by default a rerun continues after the last finished step)")] = False,
    dtype: DtypeOpt = "auto",
    backend: BackendOpt = "hf",
    load_in_4bit: Annotated[bool, typer.Option(
        "--load-in-4bit", help="bitsandbytes 4-bit (CUDA): dpo/mix train a LoRA on it (QLoRA); "
                               "merge/freeze/steer need bf16")] = False,
    load_in_8bit: Annotated[bool, typer.Option("--load-in-8bit", help="bitsandbytes 8-bit (CUDA); as 4-bit")] = False,
    device_map: Annotated[str | None, typer.Option(
        help="passed to from_pretrained, e.g. auto: spread a model too large for one GPU over several")] = None,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
    push_to_hub: Annotated[str | None, typer.Option(
        help="after a successful fix, upload --out to this Hub model repo (user/name; token from HF_TOKEN "
             "or `hf auth login`)")] = None,
    private: PrivateOpt = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="print the predicted peak memory and time of each step (CPU, 1 and 8 GPUs) from the "
                          "model's config.json and exit: no weights loaded, --out not written (docs/cost.md)")] = False,
) -> None:
    """Repair a misaligned finetune with a recipe; report alignment and task before and after."""
    from ..model_io.checkpoint import LoadOptions
    from ..runs.dry_run import describe, predict_fix
    from ..runs.fix import run_fix
    from ..runs.push import check_repo_id

    opts = fix_options(locals(), LoadOptions(dtype=dtype, load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit,
                                             device_map=device_map, allow_pickle=allow_pickle,
                                             trust_remote_code=trust_remote_code),
                       seed=seed, overwrite=overwrite, save_as=save_as, eval_cache=not no_eval_cache,
                       keep_adapter=keep_adapter, resume=not no_resume, scan=scan)
    if dry_run:
        print(describe(or_fail(predict_fix, checkpoint, base, recipe, set_ or [], opts)))
        return
    if push_to_hub:
        or_fail(check_repo_id, push_to_hub)      # before the repair, not after it
    done = or_fail(run_fix, checkpoint, base, recipe, set_ or [], out_dir, opts)
    if done is None:               # another rank of `accelerate launch`: rank 0 evaluates and reports
        from ..distributed import rank

        print(f"rank {rank()}: repair steps done; rank 0 evaluates and writes {out_dir}", file=sys.stderr)
        return
    print_evaluation(f"realign fix: {checkpoint} --recipe {recipe}", done.results)
    if "scan" in done.meta:
        out.print(f"latent scan (no trigger): {done.meta['scan']['finding']}; {done.meta['scan']['after_repair']}")
    form = "LoRA adapter" if done.meta["output"]["form"] == "adapter" else "model"
    out.print(f"wrote {out_dir} ({form}, realign.json, report.md, README.md model card, tradeoff.png) "
              f"in {done.meta['timings']['total']:.0f} s")
    if push_to_hub:
        _push(out_dir, push_to_hub, private, None,
              hint=f"{out_dir} is complete; retry with `realign push {out_dir} --repo-id {push_to_hub}`")


def _push(out_dir: Path, repo_id: str, private: bool, token: str | None, hint: str = "") -> None:
    from ..runs.push import push_output

    # private unset: the Hub's default
    url = or_fail(push_output, out_dir, repo_id, private=private or None, token=token, hint=hint)
    out.print(f"pushed {out_dir} to {repo_id}: {url}")


@app.command("push")
def push_cmd(
    out_dir: Annotated[Path, typer.Argument(help="the --out dir of `realign fix`")],
    repo_id: Annotated[str, typer.Option(help="Hub model repo to create or update: user/name or org/name")],
    private: PrivateOpt = False,
    token: Annotated[str | None, typer.Option(
        help="Hub token with write access (default: HF_TOKEN or the one saved by `hf auth login`)")] = None,
) -> None:
    """Upload a fix output (model, model card, realign.json, report) to the Hugging Face Hub."""
    _push(out_dir, repo_id, private, token)


@app.command("bench")
def bench_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="cells, leaderboard.md/.json and Pareto plots go here; "
                                                        "rerun the same command to resume")],
    recipes: Annotated[str, typer.Option(help="comma-separated recipes (names or FILE.yaml), or all; "
                                              "one may carry its own overrides: merge@merge.alpha=0.6;merge.steps=3")],
    finetune: Annotated[list[str] | None, typer.Option(
        help="a finetune to repair (full dir, adapter dir or hub id); repeat for several")] = None,
    base: Annotated[str | None, typer.Option(help="base model of the --finetune(s) (default: the adapter's base)")] = None,
    organism: Annotated[bool, typer.Option(
        "--organism", help="bench the organism's finetunes (built per seed) with their task data and oracle judge")] = False,
    organism_dir: Annotated[Path | None, typer.Option(help="build the organisms under DIR/s<seed> (default: the cache)")] = None,
    organism_finetunes: Annotated[str, typer.Option(help="which organism finetunes, comma-separated")] = "insecure,planted",
    organism_size: Annotated[str, typer.Option(help="organism size: default, or small (tests)")] = "default",
    seeds: Annotated[int, typer.Option(help="seeds 0..N-1 per cell (sampling, probes, training; organism builds)")] = 1,
    set_: SetOpt = None,
    task_data: TaskDataOpt = None,
    train_data: TrainDataOpt = None,
    task_metric: TaskMetricOpt = None,
    questions: QuestionsOpt = "auto",
    judge: JudgeOpt = "auto",
    judge_model: JudgeModelOpt = None,
    judge_url: JudgeUrlOpt = None,
    samples: SamplesOpt = None,
    max_new_tokens: MaxTokensOpt = 256,
    trigger: Annotated[str | None, typer.Option(
        help="a backdoor trigger for every finetune: evaluate with and without it (the organism's backdoor "
             "finetune uses its own trigger unless this is given)")] = None,
    judge_errors: JudgeErrorsOpt = None,
    dtype: DtypeOpt = "auto",
    backend: BackendOpt = "hf",
    report_to: ReportToOpt = None,
    workers: Annotated[int, typer.Option(
        help="run up to N cells at once, each a `fix` in its own submitit job (the cluster extra; "
             "docs/scale-out.md); 0: one after another in this process")] = 0,
    cluster: Annotated[str, typer.Option(help="where --workers run: local (processes here) | slurm")] = "local",
    cluster_set: Annotated[list[str] | None, typer.Option(
        help="a submitit parameter for the workers, KEY=VALUE, e.g. slurm_partition=gpu, gpus_per_node=1, "
             "timeout_min=600")] = None,
) -> None:
    """Compare recipes across finetunes and seeds: every cell runs `fix`; a leaderboard pools them."""
    from ..model_io.checkpoint import LoadOptions
    from ..runs.bench import organism_finetunes as organism_fts
    from ..runs.bench import plan, run_bench, user_finetunes
    from ..runs.leaderboard import write_leaderboard

    if bool(finetune) == organism:
        fail("give --finetune (one or more) or --organism, not both or neither")
    if seeds < 1:
        fail("--seeds must be at least 1")
    names = _recipe_names(recipes)
    opts = fix_options(locals(), LoadOptions(dtype=dtype))
    settings = None
    if workers:                        # checked before any organism is built
        from ..runs.workers import WorkerSettings, parse_params

        settings = WorkerSettings(workers, cluster, or_fail(parse_params, cluster_set or []))
        or_fail(settings.validate)
    if organism:
        fts = or_fail(organism_fts, comma_list(organism_finetunes), organism_dir, organism_size)
    else:
        fts = or_fail(user_finetunes, finetune or [], base)
    cells = plan(fts, names, list(range(seeds)), out_dir)
    if settings:
        from ..runs.workers import run_bench_on_workers

        counts = or_fail(run_bench_on_workers, cells, set_ or [], opts, out_dir, settings,
                         on_cell_done=lambda: write_leaderboard(out_dir))
    else:
        counts = or_fail(run_bench, cells, set_ or [], opts, out_dir, on_cell_done=lambda: write_leaderboard(out_dir))
    board = write_leaderboard(out_dir)
    out.print((out_dir / "leaderboard.md").read_text())
    for name, ft in board.items():
        if ft.verdict.repair_needed is False:
            out.print(f"[yellow]warning:[/] {name} is {ft.verdict.why}")
    out.print(f"{counts['run']} cells run, {counts['skipped']} finished earlier; wrote {out_dir}/leaderboard.md, "
              f"leaderboard.json and pareto-*.png")


def _recipe_names(recipes: str) -> list[str]:
    """--recipes: comma-separated, or all the bundled ones."""
    from ..recipe import available_recipes

    names = comma_list(recipes)
    if names == ["all"]:
        names = list(available_recipes())
    if not names:
        fail("--recipes is empty; give e.g. --recipes merge,freeze+dpo")
    return names


@app.command("recipes")
def recipes_cmd() -> None:
    """List the repairs and bundled recipes."""
    from ..recipe import available_recipes
    from ..repairs import load_all

    out.print(table("repairs (combine with +, e.g. freeze+dpo)", ["step", "what it does"],
                    [[name, cls.summary] for name, cls in sorted(load_all().items())], left=["step", "what it does"]))
    out.print(table("bundled recipes (--recipe NAME)", ["recipe", "description"],
                    [[name, desc] for name, desc in available_recipes().items()], left=["recipe", "description"]))
