"""Print realign's cost table: predicted peak memory and time of every bundled recipe at 0.5B, 8B
and 70B on 1 and 8 GPUs (and the CPU for 0.5B), the fitted coefficients, and the measured anchors
with what the model predicts for each (src/realign/cost.py, docs/cost.md).

    python scripts/cost_table.py                      # print the tables (markdown)
    python scripts/cost_table.py --update docs/cost.md  # replace the generated part of docs/cost.md
    python scripts/cost_table.py --count-tokens       # recount the item sets' tokens (needs SmolLM2)
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from realign.cost import (FITS_LEGEND, MIB, ModelShape, Setting, anchor_residuals, duration, load_cost_model,
                          memory_cell, predict)

# Shapes of public models (their config.json values); parameters are counted from them.
SIZES = {
    "0.5B (Qwen2.5-0.5B-Instruct)": {
        "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
        "tie_word_embeddings": True, "torch_dtype": "bfloat16"},
    "8B (Llama-3.1-8B-Instruct)": {
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
    "70B (Llama-3.1-70B-Instruct)": {
        "model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
        "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
}
START, END = "<!-- cost-table:start -->", "<!-- cost-table:end -->"


def recipes() -> dict[str, list[dict]]:
    from realign.recipe import available_recipes, load_recipe

    return {name: load_recipe(name).resolved() for name in available_recipes()}


def size_table(label: str, cfg: dict, cm) -> str:
    shape = ModelShape.from_config(cfg, label)
    settings = ([Setting("cpu", 0, "float32")] if shape.params < 1e9 else []) + \
        [Setting("gpu", 1, "bfloat16"), Setting("gpu", 8, "bfloat16")]
    cols = [f"{s.label()}{' fp32' if s.device == 'cpu' else ' bf16'}" for s in settings]
    lines = [f"#### {label}: {shape.params / 1e9:.2f}B parameters, {shape.layers} layers, hidden {shape.hidden}, "
             f"vocabulary {shape.vocab:,}", "",
             "| recipe | " + " | ".join(f"{c}: peak / time" for c in cols) + " | 8 GPUs: layout |",
             "|---|" + "---|" * (len(cols) + 1)]
    for name, steps in recipes().items():
        try:
            preds = [predict(steps, shape, s, cm) for s in settings]
        except ValueError as e:          # a repair newer than the cost model
            lines.append(f"| {name} | " + " | ".join([str(e)] + ["—"] * len(cols)) + " |")
            continue
        cells = [f"{memory_cell(p.peak, p.fits, p.fits_low)} / {duration(p.seconds)}" for p in preds]
        layout = "copy per GPU" if preds[-1].layout.startswith("a whole copy") else "--device-map auto"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {layout} |")
    return "\n".join(lines)


def coefficient_table(cm) -> str:
    lines = ["| coefficient | value | from |", "|---|---|---|"]
    fits = {}
    for a in cm.anchors:
        if a.use == "fit":
            fits.setdefault(a.key if a.repair not in ("generation", "process", "dpo-activations") else a.repair,
                            []).append(a.id)
    for key, c in cm.seconds_per_param_token.items():
        src = ", ".join(fits.get(key, []) if key != "generation" else ["probe-generation"])
        lines.append(f"| CPU seconds per parameter-token, {key} | {c:.3g} | {src} |")
    for key, k in cm.weight_copies.items():
        lines.append(f"| weight copies held (upper bound), {key} | {k:.2f} | {', '.join(fits.get(key, []))} |")
    lines += [f"| activation scale (measured / structural bytes per dpo sequence) | {cm.activation_scale:.3f} | "
              f"dpo-micro-batch |",
              f"| process baseline (CPU) | {cm.baseline_bytes / MIB:,.0f} MiB | process-baseline |",
              f"| GPU generation, answer-token slots per second | {cm.gpu_generation_rate:,.0f} | gpu-generation |"]
    return "\n".join(lines)


def anchor_table(cm) -> str:
    lines = ["| anchor | use | repair | passes | seconds: measured / predicted | peak MiB: measured / predicted "
             "(high) | source |", "|---|---|---|---|---|---|---|"]
    for a, s, m in anchor_residuals(cm):
        passes = ", ".join(f"{k} {v}" for k, v in a.passes.items())
        lines.append(f"| {a.id} | {a.use} | {a.key} | {passes} | {a.seconds:,.0f} / {s:,.0f} | "
                     f"{a.peak_mb:,.0f} / {m:,.0f} | {a.source} |")
    others = [a for a in cm.anchors if a.repair in ("generation", "process", "dpo-activations")]
    lines += ["", "| anchor | what | source |", "|---|---|---|"]
    for a in others:
        lines.append(f"| {a.id} ({a.device}, {a.model}, {a.date}) | {_what(a)} | {a.source} |")
    return "\n".join(lines)


def _what(a) -> str:
    if a.repair == "generation" and a.device == "cpu":
        return f"{a.seconds:,.0f} s for {a.passes.get('generation')} probe generations"
    if a.repair == "generation":
        return f"{a.extra['generated_tokens']:,} tokens, {a.extra['answers']} answers in {a.seconds} s"
    if a.repair == "dpo-activations":
        return f"peak MB by micro-batch size: {a.extra['peak_mb_by_micro_batch']}"
    return f"{a.peak_mb:,.0f} MB RSS after imports"


def tables() -> str:
    cm = load_cost_model()
    parts = ["Generated by `python scripts/cost_table.py --update docs/cost.md`; not typed.", "",
             f"Peak: per device, low–high in GB (GiB); {FITS_LEGEND}. Time: the repair steps of a fresh fix "
             f"(probe answers generated once), no evaluations. CPU: fitted on the anchors (2 threads). GPU: "
             f"ASSUMED {cm.gpu['name']} at MFU {cm.gpu['mfu']}, not measured.", ""]
    for label, cfg in SIZES.items():
        parts += [size_table(label, cfg, cm), ""]
    parts += ["#### Coefficients fitted on the anchors", "", coefficient_table(cm), "",
              "#### Anchors and what the model predicts for each, on its own model (SmolLM2-135M, CPU)", "",
              anchor_table(cm)]
    return "\n".join(parts)


def count_tokens() -> None:
    """The item sets' token counts as cost_anchors.yaml records them (SmolLM2's tokenizer only)."""
    from transformers import AutoTokenizer

    from realign.evals.questions import load_realignment_prompts
    from realign.model_io.offline_models import smollm2_dir
    from realign.real.data import load
    from realign.runs.setting import repair_items

    tok = AutoTokenizer.from_pretrained(smollm2_dir())

    def n(msgs, gen=False):
        return len(tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen, return_dict=False))

    items = repair_items(False)
    prompts = sum(n(c, True) for c, _, _ in items)
    answers = sum(len(tok(a)["input_ids"]) + 1 for _, mis, ali in items for a in mis + ali)
    task = [n(c) for c in load("gsm8k_test")[:64]]
    real = load_realignment_prompts()
    print(f"repair_logodds_tokens: {prompts + answers}   # prompts {prompts} + answers {answers}")
    print(f"task_tokens: {sum(task)}\ntask_conversation_tokens: {round(sum(task) / len(task))}")
    print(f"realignment_prompts: {len(real)}\nrealignment_prompt_tokens: "
          f"{round(sum(n([{'role': 'user', 'content': p}], True) for p in real) / len(real))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--update", type=Path, help="replace the generated part of this markdown file")
    ap.add_argument("--count-tokens", action="store_true", help="recount the item sets' tokens")
    args = ap.parse_args()
    if args.count_tokens:
        return count_tokens()
    text = tables()
    if args.update:
        doc = args.update.read_text(encoding="utf-8")
        if START not in doc or END not in doc:
            raise SystemExit(f"{args.update} has no {START} … {END} section")
        args.update.write_text(re.sub(f"{re.escape(START)}.*?{re.escape(END)}", lambda _: f"{START}\n{text}\n{END}",
                                      doc, flags=re.S), encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
