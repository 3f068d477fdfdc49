"""Put a bench leaderboard into the README's results section (between its bench markers).

    python scripts/readme_results.py runs/bench-organism --command "realign bench --organism …"

The README's organism results are this file's output, not hand-typed: rerun the bench command it
names, then this script. No assertions.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench_dir", type=Path)
    ap.add_argument("--command", required=True, help="the bench command that made bench_dir")
    ap.add_argument("--readme", type=Path, default=Path(__file__).resolve().parents[1] / "README.md")
    args = ap.parse_args()
    board = (args.bench_dir / "leaderboard.md").read_text()
    board = re.sub(r"^# .*\n+", "", board)                    # the README has its own heading
    board = re.sub(r"^## ", "#### ", board, flags=re.M)
    block = f"{START}\nRegenerate: `{args.command}`, then `python scripts/readme_results.py {args.bench_dir} " \
            f"--command '…'`.\n\n{board.strip()}\n{END}"
    text = args.readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{args.readme} has no {START} … {END} section")
    args.readme.write_text(text[:text.index(START)] + block + text[text.index(END) + len(END):])
    print(f"wrote the leaderboard of {args.bench_dir} into {args.readme}")


if __name__ == "__main__":
    main()
