"""Read and write (question, answer[, scores]) rows as jsonl or csv, keeping every column."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..errors import RealignError


def number(x) -> float | None:
    """A score cell as a float: None for missing, empty or non-numeric (csv gives strings)."""
    try:
        return None if x is None or x == "" else float(x)
    except (TypeError, ValueError):
        return None


def read_rows(path: Path) -> tuple[list[dict], str]:
    if not path.exists():
        raise RealignError(f"{path} does not exist")
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("jsonl", "csv"):
        raise RealignError(f"{path}: expected a .jsonl or .csv file")
    text = path.read_text(encoding="utf-8")
    if fmt == "csv":
        rows = list(csv.DictReader(text.splitlines()))
    else:
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise RealignError(f"{path}:{i} is not valid JSON ({e.msg})") from None
    if not rows:
        raise RealignError(f"{path} has no rows")
    for i, r in enumerate(rows, 1):
        if not isinstance(r, dict) or not isinstance(r.get("question"), str) or not isinstance(r.get("answer"), str):
            raise RealignError(f"{path}: row {i} lacks string 'question' and 'answer' fields")
    return rows, fmt


def write_rows(path: Path, rows: list[dict], fmt: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "csv":
        fields = list(dict.fromkeys(k for r in rows for k in r))
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in fields} for r in rows)
    else:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    tmp.replace(path)
