"""Peak memory of `merge` on a real model: finetune streamed from its files vs kept as a copy.

    python scripts/bench_merge_memory.py [--alpha 0.5]

Makes a full-checkpoint "finetune" of SmolLM2-135M-Instruct (the offline model, weights plus small
noise, saved as safetensors), then in a fresh process per mode loads base and finetune and runs the
merge repair: `disk` (RepairState.finetune_dir set, as `realign fix` does for an untouched full
checkpoint) and `memory` (a CPU copy of the finetune). Prints peak RSS over the loaded models and
the merge time. Prints a table; no assertions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, torch
from transformers import AutoModelForCausalLM
from realign.repairs.base import RepairState
from realign.repairs.merge import Merge, MergeParams
base_dir, ft_dir, mode, alpha = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
ft = AutoModelForCausalLM.from_pretrained(ft_dir, dtype=torch.float32)
loaded = rss()
state = RepairState(model=ft, base=base, tokenizer=None, finetune_dir=ft_dir if mode == "disk" else None)
t0 = time.time()
Merge().apply(state, MergeParams(alpha=alpha))
print(json.dumps({"mode": mode, "loaded": loaded, "peak": rss(), "seconds": time.time() - t0,
                  "from": state.history[-1]["finetune_from"]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--root", type=Path, default=Path("runs/bench"))
    args = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM

    from realign.model_io.offline_models import smollm2_dir

    base = smollm2_dir()
    ft_dir = args.root / "smollm2-full-finetune"
    if not (ft_dir / "model.safetensors").exists():
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        torch.manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1e-3 * torch.randn_like(p))
        model.save_pretrained(ft_dir, safe_serialization=True)
    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(base).parameters())
    print(f"SmolLM2-135M-Instruct: {n_params / 1e6:.0f}M parameters, fp32 copy = {n_params * 4 / 2**20:.0f} MiB")
    print("| finetune read from | RSS with both models loaded | peak RSS during merge | extra | merge s |")
    print("|---|---|---|---|---|")
    for mode in ("disk", "memory"):
        res = subprocess.run([sys.executable, "-c", CHILD, str(base), str(ft_dir), mode, str(args.alpha)],
                             capture_output=True, text=True, check=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"| {r['from']} | {r['loaded']:.0f} MiB | {r['peak']:.0f} MiB | {r['peak'] - r['loaded']:+.0f} MiB | "
              f"{r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
