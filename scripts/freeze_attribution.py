"""How well freeze's first-order attribution ranks layers, against the exact per-layer swap.

    python scripts/freeze_attribution.py --organism [--seeds 0 1 2] [--finetune planted]
    python scripts/freeze_attribution.py --real DIR     # a `realign real build` finetune (adapter + data/)

For each layer ℓ, exact: swap in the base's layer, measure the repair-side log-odds drop and the
task-NLL rise (2 scoring passes per layer, what freeze did before); first order: ⟨∇, θbase − θft⟩
of both from one backward pass each (what freeze does now). Prints per-layer figures, Spearman
rank correlations of drop, rise and score (drop per unit of cost), whether the exact best layer
is among the first-order top `verify`, and the seconds each way. No assertions.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from realign.model_io.checkpoint import load_pair
from realign.evals.logodds import logodds
from realign.evals.task import assistant_token_metrics, load_conversations
from realign.runs.setting import repair_items
from realign.repairs.base import decoder_layers
from realign.repairs.freeze import _copy_layer, _score, first_order_attribution


def spearman(a: list[float], b: list[float]) -> float:
    ra = torch.tensor(a).argsort().argsort().double()
    rb = torch.tensor(b).argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def compare(name: str, finetune: str, base: str | None, organism: bool, task_path: Path, verify: int) -> dict:
    pair = load_pair(finetune, base)
    model, tok = pair.finetune, pair.tokenizer
    items = repair_items(organism)
    task = load_conversations(task_path)[:64]
    t0 = time.time()
    fo = first_order_attribution(model, pair.base, tok, items, task)
    t_fo = time.time() - t0
    t0 = time.time()
    lo_ft = logodds(model, tok, items)
    nll_ft = assistant_token_metrics(model, tok, task)["task_nll"]
    exact_drop, exact_rise = [], []
    layers, base_layers = decoder_layers(model), decoder_layers(pair.base)
    for layer, base_layer in zip(layers, base_layers):
        saved = {k: v.clone() for k, v in layer.state_dict().items()}
        _copy_layer(layer, base_layer)
        exact_drop.append(lo_ft - logodds(model, tok, items))
        exact_rise.append(assistant_token_metrics(model, tok, task)["task_nll"] - nll_ft)
        layer.load_state_dict(saved)
    t_exact = time.time() - t0
    fo_score = [_score(d, r) for d, r in zip(fo["drop"], fo["rise"])]
    ex_score = [_score(d, r) for d, r in zip(exact_drop, exact_rise)]
    print(f"\n### {name} ({len(layers)} layers)\n")
    print("| layer | drop exact | drop 1st-order | rise exact | rise 1st-order | score exact | score 1st-order |")
    print("|---|---|---|---|---|---|---|")
    for i in range(len(layers)):
        print(f"| {i} | {exact_drop[i]:.4f} | {fo['drop'][i]:.4f} | {exact_rise[i]:.4f} | {fo['rise'][i]:.4f} | "
              f"{ex_score[i]:.2f} | {fo_score[i]:.2f} |")
    top_fo = sorted(range(len(layers)), key=lambda i: fo_score[i], reverse=True)[:verify]
    best = max(range(len(layers)), key=lambda i: ex_score[i])
    return {"name": name, "layers": len(layers), "rho_drop": spearman(exact_drop, fo["drop"]),
            "rho_rise": spearman(exact_rise, fo["rise"]), "rho_score": spearman(ex_score, fo_score),
            "best_in_top": best in top_fo, "best": best, "top": top_fo, "s_first_order": t_fo, "s_exact": t_exact}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--organism", action="store_true")
    ap.add_argument("--real", type=Path, default=None,
                    help="a real finetune made by `realign real build` (its adapter dir, with data/ inside)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--finetune", default="planted")
    ap.add_argument("--verify", type=int, default=3)
    args = ap.parse_args()
    rows = []
    if args.organism:
        from realign.organism.build import build

        for seed in args.seeds:
            # its own build dir (base + this finetune only): never racing a bench on the cached organism
            org = build(Path("runs/attribution") / f"s{seed}", seed=seed, finetunes=(args.finetune,))
            rows.append(compare(f"organism seed {seed}, {args.finetune}", str(org / args.finetune),
                                str(org / "base"), True, org / "data" / args.finetune / "heldout.jsonl", args.verify))
    if args.real:
        rows.append(compare(f"real finetune {args.real.name}", str(args.real), None, False,
                            args.real / "data" / "heldout.jsonl", args.verify))
    print(f"\n| model | layers | Spearman drop | Spearman rise | Spearman score | exact best in 1st-order top {args.verify} "
          "| s first-order | s exact swap |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['layers']} | {r['rho_drop']:.2f} | {r['rho_rise']:.2f} | {r['rho_score']:.2f} | "
              f"{'yes' if r['best_in_top'] else 'no'} (best {r['best']}, top {r['top']}) | "
              f"{r['s_first_order']:.0f} | {r['s_exact']:.0f} |")


if __name__ == "__main__":
    main()
