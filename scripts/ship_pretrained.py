"""Pretrain the default organism (pretraining seed 0) and place it in realign's package data.

    python scripts/ship_pretrained.py [--size default] [--seed 0]

`realign organism build` then starts from this model instead of pretraining (18 of a default
build's ~25 CPU-minutes on 2 cores). Rerun this after any change to the world, the tokenizer or
the pretraining config: the folder is named by the pretraining key, and tests/test_organism_build.py
fails while the shipped model's key differs from the one the current code computes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from realign.organism.build import _pretrain_key, make_pretrained
from realign.organism.config import preset
from realign.organism.tokenizer import build_tokenizer

SHIP = Path(__file__).resolve().parents[1] / "src" / "realign" / "data" / "organism_pretrained"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="default")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = preset(args.size)
    key = _pretrain_key(cfg, args.seed)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        info = make_pretrained(Path(tmp), build_tokenizer(), cfg, args.seed)
        for old in SHIP.glob("*/done.json"):    # an outdated model of this pretraining seed goes; other
            if json.loads(old.read_text()).get("pretrain_seed") == args.seed:   # kept draws stay
                shutil.rmtree(old.parent)
        shutil.copytree(tmp, SHIP / key)
    size = sum(f.stat().st_size for f in (SHIP / key).iterdir()) / 2**20
    print(f"pretrained {key} in {time.time() - t0:.0f} s (final loss {info['final_loss']}), {size:.1f} MiB in {SHIP / key}")


if __name__ == "__main__":
    main()
