"""`realign fix` (repair one finetune), `realign bench` (recipes × finetunes × seeds through fix's
code), `realign push` (a fix output to the Hub) and `realign recipes` (what a recipe can hold)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ..options import BenchOptions, FixOptions
from .common import BaseOpt, CheckpointArg, SetOpt, app, or_fail, out, print_evaluation, table
from .options import Omit, with_options

PrivateOpt = Annotated[bool, typer.Option("--private", help="create the Hub repo private (an existing repo "
                                                               "keeps its visibility)")]


@app.command("fix")
@with_options
def fix_cmd(
    checkpoint: CheckpointArg,
    recipe: Annotated[str, typer.Option(help="steps joined by + (freeze+dpo), a bundled recipe name, or FILE.yaml")],
    out_dir: Annotated[Path, typer.Option("--out", help="where the repaired model and report go")],
    base: BaseOpt = None,
    set_: SetOpt = None,
    opts: FixOptions = None,
    push_to_hub: Annotated[str | None, typer.Option(
        help="after a successful fix, upload --out to this Hub model repo (user/name; token from HF_TOKEN "
             "or `hf auth login`)")] = None,
    private: PrivateOpt = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="print the predicted peak memory and time of each step (CPU, 1 and 8 GPUs) from the "
                          "model's config.json and exit: no weights loaded, --out not written (docs/cost.md)")] = False,
) -> None:
    """Repair a misaligned finetune with a recipe; report alignment and task before and after."""
    from ..runs.dry_run import describe, predict_fix
    from ..runs.fix import run_fix
    from ..runs.push import check_repo_id

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
@with_options
def bench_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="cells, leaderboard.md/.json and Pareto plots go here; "
                                                        "rerun the same command to resume")],
    req: BenchOptions,
    set_: SetOpt = None,
    opts: Annotated[FixOptions, Omit("seed", "overwrite")] = None,   # set per cell
) -> None:
    """Compare recipes across finetunes and seeds: every cell runs `fix`; a leaderboard pools them."""
    from ..runs.bench_request import bench
    from ..runs.leaderboard import write_leaderboard

    counts = or_fail(bench, req, set_ or [], opts, out_dir)
    board = write_leaderboard(out_dir)
    out.print((out_dir / "leaderboard.md").read_text())
    for name, ft in board.items():
        if ft.verdict.repair_needed is False:
            out.print(f"[yellow]warning:[/] {name} is {ft.verdict.why}")
    out.print(f"{counts['run']} cells run, {counts['skipped']} finished earlier; wrote {out_dir}/leaderboard.md, "
              f"leaderboard.json and pareto-*.png")


@app.command("recipes")
def recipes_cmd() -> None:
    """List the repairs and bundled recipes."""
    from ..recipe import available_recipes
    from ..repairs import load_all

    out.print(table("repairs (combine with +, e.g. freeze+dpo)", ["step", "what it does"],
                    [[name, cls.summary] for name, cls in sorted(load_all().items())], left=["step", "what it does"]))
    out.print(table("bundled recipes (--recipe NAME)", ["recipe", "description"],
                    [[name, desc] for name, desc in available_recipes().items()], left=["recipe", "description"]))
