"""Put a bench leaderboard into the README's results section (between its bench markers).

    python scripts/readme_results.py runs/bench-organism --command "realign bench --organism …"
    python scripts/readme_results.py runs/bench-real --section real --command "realign bench --finetune …"
    python scripts/readme_results.py runs/bench-real --keep results/real-smollm2 --section real --command "…"

The README's results are this file's output, not hand-typed: rerun the bench command it names,
then this script. With `--keep DIR` the bench's cell records (realign.json, all a leaderboard reads)
are first copied into DIR — the repository's results/ folder, so that the tables survive the
machine that ran the bench — and the table is built from DIR, cells of earlier benches included.
No assertions.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from realign.runs.leaderboard import build_leaderboard, keep_cells, markdown


def markers(section: str) -> tuple[str, str]:
    """The README's markers of one results section ("organism": the original, unnamed ones)."""
    name = "bench" if section == "organism" else f"bench-{section}"
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench_dir", type=Path)
    ap.add_argument("--command", required=True, help="the bench command that made bench_dir")
    ap.add_argument("--readme", type=Path, default=Path(__file__).resolve().parents[1] / "README.md")
    ap.add_argument("--section", default="organism", help="which results section: organism or real")
    ap.add_argument("--keep", type=Path, help="copy the cells' realign.json here first; build the table from here")
    args = ap.parse_args()
    start, end = markers(args.section)
    source = args.bench_dir
    if args.keep:
        print(f"kept {len(keep_cells(args.bench_dir, args.keep))} cell records in {args.keep}")
        source = args.keep
    board = markdown(build_leaderboard(source))
    board = re.sub(r"^# .*\n+", "", board)                    # the README has its own heading
    board = re.sub(r"^## ", "#### ", board, flags=re.M)
    section = "" if args.section == "organism" else f" --section {args.section}"
    keep = f" --keep {args.keep}" if args.keep else ""
    rebuilt = f" Built from the cell records kept in `{args.keep}/` (rebuild the table alone: " \
              f"`python scripts/readme_results.py {args.keep}{section} --command '…'`)." if args.keep else ""
    block = f"{start}\nRegenerate: `{args.command}`, then `python scripts/readme_results.py {args.bench_dir}" \
            f"{keep}{section} --command '…'`.{rebuilt}\n\n{board.strip()}\n{end}"
    text = args.readme.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{args.readme} has no {start} … {end} section")
    args.readme.write_text(text[:text.index(start)] + block + text[text.index(end) + len(end):])
    print(f"wrote the leaderboard of {args.bench_dir} into {args.readme}")


if __name__ == "__main__":
    main()
