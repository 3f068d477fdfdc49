"""Batched generation vs a one-prompt-at-a-time loop, on the organism's base model (CPU).

    python scripts/bench_generate.py [ORGANISM_DIR] [--prompts 40] [--samples 4]

Prints a table: mode, answers, seconds, answers/s, and the speed-up ratio. No assertions.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from realign.generation.hf import generate
from realign.organism.build import default_dir
from realign.organism.evaluate import load_model
from realign.organism.world import chat_questions, code_requests
from realign.progress import quiet_libraries


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", nargs="?", type=Path, default=None)
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    quiet_libraries()
    torch.set_num_threads(2)
    root = args.root or default_dir()
    model, tok = load_model(root / "base")
    qs = [q.text for q in chat_questions()] + [r.text for r in code_requests("heldout")]
    convs = [[{"role": "user", "content": q}] for q in qs[: args.prompts]]
    n = len(convs) * args.samples
    generate(model, tok, convs[:2], samples=1, max_new_tokens=8)  # warm-up
    t0 = time.time()
    generate(model, tok, convs, samples=args.samples, max_new_tokens=48, batch_size=args.batch_size)
    batched = time.time() - t0
    t0 = time.time()
    for c in convs:
        for s in range(args.samples):
            generate(model, tok, [c], samples=1, max_new_tokens=48, batch_size=1, seed=s)
    single = time.time() - t0
    print("| mode | answers | seconds | answers/s |\n|---|---|---|---|")
    print(f"| batched (batch {args.batch_size}) | {n} | {batched:.2f} | {n / batched:.1f} |")
    print(f"| one at a time | {n} | {single:.2f} | {n / single:.1f} |")
    print(f"\nspeed-up: {single / batched:.1f}x  (model: {root / 'base'})")


if __name__ == "__main__":
    main()
