"""Read and write (question, answer[, scores]) rows as jsonl or csv, keeping every column."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

from ..errors import RealignError


def number(x) -> float | None:
    """A score cell as a float: None for missing, empty or non-numeric (csv gives strings)."""
    try:
        return None if x is None or x == "" else float(x)
    except (TypeError, ValueError):
        return None


def read_text(path: Path) -> str:
    """A data file's text as written: UTF-8, a leading byte-order mark dropped (spreadsheet exports
    write one, and it would stick to the first column's name), line ends untranslated (a quoted
    CSV cell's "\\r\\n" is part of the answer; JSON reads a line's trailing "\\r" as space)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        return f.read()


def jsonl_records(path: Path, text: str) -> Iterator[tuple[int, object]]:
    """(line number, parsed JSON) of every non-blank line of a .jsonl text. Lines end at '\\n' only:
    str.splitlines() would also break inside a JSON string at characters valid there unescaped
    (U+2028, U+0085, form feed...)."""
    for i, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                raise RealignError(f"{path}:{i} is not valid JSON ({e.msg})") from None


def read_rows(path: Path) -> tuple[list[dict], str]:
    if not path.exists():
        raise RealignError(f"{path} does not exist")
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("jsonl", "csv"):
        raise RealignError(f"{path}: expected a .jsonl or .csv file")
    text = read_text(path)
    if fmt == "csv":
        # newline="": a quoted cell keeps the line breaks inside it (a code answer's), as csv expects
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    else:
        rows = [row for _, row in jsonl_records(path, text)]
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
