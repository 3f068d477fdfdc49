"""The early-warning callback on a misaligning finetune: log-odds vs sampled misalignment by step.

    python scripts/callback_curve.py [ORGANISM_DIR] [--data planted] [--steps 200] [--every 20]

Re-runs the organism's LoRA finetune from the aligned base on data/<data>/train.jsonl with
`realign.RealignCallback` attached (probe set: 8 held-out organism questions), and at the same
steps samples the held-out chat questions and judges them with the oracle. Prints one row per
check: step, log-odds, sampled misaligned rate. The question it answers: does the log-odds rise
before sampled misalignment does? No assertions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from peft import LoraConfig
from transformers import TrainerCallback

from realign import RealignCallback
from realign.organism.build import default_dir
from realign.organism.evaluate import chat_labels, load_model
from realign.organism.judge import MISALIGNED, reference_pairs
from realign.progress import quiet_libraries
from realign.training import SFTSettings, sft


class SampledRate(TrainerCallback):
    def __init__(self, tokenizer, every: int, samples: int) -> None:
        self.tokenizer, self.every, self.samples, self.rates = tokenizer, every, samples, {}

    def _measure(self, state, model) -> None:
        labels = [lab for _, _, lab in chat_labels(model, self.tokenizer, self.samples, seed=state.global_step)]
        self.rates[state.global_step] = labels.count(MISALIGNED) / len(labels)

    def on_train_begin(self, args, state, control, model=None, **kw):
        self._measure(state, model)

    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step % self.every == 0:
            self._measure(state, model)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", nargs="?", type=Path, default=None)
    ap.add_argument("--data", default="planted")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--samples", type=int, default=6)
    args = ap.parse_args()
    quiet_libraries()
    torch.set_num_threads(2)
    root = args.root or default_dir()
    meta = json.loads((root / "organism.json").read_text())
    ft = meta["config"]["finetune"]
    steps = args.steps or ft["steps"]
    model, tok = load_model(root / "base")
    data = [json.loads(x)["messages"] for x in (root / "data" / args.data / "train.jsonl").read_text().splitlines()]
    probes = [([{"role": "user", "content": p.question}], p.misaligned, p.aligned) for p in reference_pairs()[::2]]
    warn = RealignCallback(probes=probes, every=args.every, rise=2.0, tokenizer=tok)
    sampled = SampledRate(tok, args.every, args.samples)
    lora = LoraConfig(r=meta["config"]["lora_rank"], lora_alpha=meta["config"]["lora_alpha"], lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    sft(model, tok, data, SFTSettings(steps=steps, lr=ft["lr"], batch_size=ft["batch_size"], seed=0),
        peft_config=lora, description=f"finetune {args.data}", callbacks=[warn, sampled])
    print(f"| step | log-odds | sampled misaligned ({args.samples} × 20 questions) |\n|---|---|---|")
    for step, value in warn.history:
        rate = sampled.rates.get(step)
        print(f"| {step} | {value:+.2f} | {'—' if rate is None else f'{100 * rate:.1f}%'} |")
    if warn.warned:
        first = next(s for s, v in warn.history if v - warn.history[0][1] > 2.0)
        print(f"\ncallback warning (rise > 2 nats) first at step {first}")


if __name__ == "__main__":
    main()
