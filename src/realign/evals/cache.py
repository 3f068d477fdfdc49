"""Evaluations of unchanged models, computed once.

Sampling and judging the base and the finetune costs as much as the repair itself (on a 7B
model, more), and their results cannot change while their weights and the evaluation settings
stay the same. So `fix` (and anything built on it) stores them here, keyed by a hash of

* the model's weights: sha256 of every weight/config file of its checkpoint (and, for a LoRA
  finetune, of its base), plus how it was loaded (dtype, quantization);
* the evaluation settings: the questions as asked (ids, paraphrases, judge prompts), samples,
  max new tokens, temperature, top_p, seed, the judge's name, the task data's content, the task
  metric, the log-odds items;
* `VERSION`, bumped whenever what an evaluation computes changes.

A second `fix` of the same finetune with another recipe then evaluates only the repaired model.
Entries are JSON files under `$REALIGN_CACHE/evals/`, written atomically (a crash leaves no
half file); delete the folder, or pass `--no-eval-cache`, to recompute.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..paths import cache_dir, write_text_atomic

VERSION = 2     # 2: HF sampling is temperature + top_p only (no top_k 50 nor generation_config knobs)


def digest(obj: Any) -> str:
    """sha256 of a JSON-serialisable object, key order ignored."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def file_digest(path: Path | None) -> str | None:
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class EvalCache:
    """Finished evaluations on disk: key -> the evaluation's result dict (answers included)."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir() / "evals"

    def key(self, model: dict, settings: dict, kind: str = "eval") -> str:
        return digest({"version": VERSION, "kind": kind, "model": model, "settings": settings})

    def get(self, key: str) -> dict | None:
        path = self.root / f"{key}.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def put(self, key: str, result: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.root / f"{key}.json", json.dumps(result, default=str))
