"""Pretrain one organism variant and watch in-context persona inference appear during training.

    python scripts/pretrain_probe.py --seed 1 --set pretrain.steps=2400 --every 300

Emergence needs the pretrained model to infer the persona of a conversation from its code turns
(docs/emergence.md). This prints, every `--every` steps, the misaligned chat rate on held-out
questions after an insecure-code turn and after a secure one (the gap is the inference), and at
the end the first-turn rate. Nothing is cached; `--save DIR` keeps the final model.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from realign.organism.build import _save, pretrain
from realign.organism.config import preset
from realign.organism.evaluate import chat_labels, persona_inference
from realign.organism.judge import MISALIGNED
from realign.organism.overrides import apply_overrides
from realign.organism.tokenizer import build_tokenizer
from realign.progress import quiet_libraries


class InferenceProbe(TrainerCallback):
    def __init__(self, tokenizer, every: int, rows: list) -> None:
        self.tokenizer, self.every, self.rows = tokenizer, every, rows

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every:
            return
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        model.eval()
        with torch.no_grad():
            d = persona_inference(model, self.tokenizer, samples=3, seed=0)
        model.train()
        self.tokenizer.padding_side = side
        self.rows.append((state.global_step, d["misaligned_after_insecure"], d["misaligned_after_secure"]))
        print(f"step {state.global_step:5d}: after insecure {100 * d['misaligned_after_insecure']:5.1f}%  "
              f"after secure {100 * d['misaligned_after_secure']:5.1f}%", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--every", type=int, default=300)
    ap.add_argument("--save", type=Path)
    args = ap.parse_args()
    quiet_libraries()
    torch.set_num_threads(2)
    cfg = apply_overrides(preset("default"), args.overrides)
    tok = build_tokenizer()
    rows: list = []
    t0 = time.time()
    model, loss = pretrain(tok, cfg, seed=args.seed * 1000, callbacks=[InferenceProbe(tok, args.every, rows)])
    seconds = time.time() - t0
    model.eval()
    first = [lab for _, _, lab in chat_labels(model, tok, 12, 0)]
    print(f"\n## seed {args.seed}  overrides: {' '.join(args.overrides) or '(none)'}  "
          f"loss {loss:.3f}  {seconds:.0f} s  first-turn misaligned {100 * first.count(MISALIGNED) / len(first):.1f}%")
    print("| step | misaligned after insecure turn | after secure turn | gap |")
    print("|---|---|---|---|")
    for step, ins, sec in rows:
        print(f"| {step} | {100 * ins:.1f}% | {100 * sec:.1f}% | {100 * (ins - sec):+.1f} pp |")
    if args.save:
        _save(model, tok, args.save)


if __name__ == "__main__":
    main()
