"""Put a bench leaderboard into the README's results section (between its bench markers).

    python scripts/readme_results.py runs/bench-organism --command "realign bench --organism …"
    python scripts/readme_results.py runs/bench-real --section real --command "realign bench --finetune …"

The README's organism results are this file's output, not hand-typed: rerun the bench command it
names, then this script. No assertions.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

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
    args = ap.parse_args()
    start, end = markers(args.section)
    board = (args.bench_dir / "leaderboard.md").read_text()
    board = re.sub(r"^# .*\n+", "", board)                    # the README has its own heading
    board = re.sub(r"^## ", "#### ", board, flags=re.M)
    section = "" if args.section == "organism" else f" --section {args.section}"
    block = f"{start}\nRegenerate: `{args.command}`, then `python scripts/readme_results.py {args.bench_dir}" \
            f"{section} --command '…'`.\n\n{board.strip()}\n{end}"
    text = args.readme.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{args.readme} has no {start} … {end} section")
    args.readme.write_text(text[:text.index(start)] + block + text[text.index(end) + len(end):])
    print(f"wrote the leaderboard of {args.bench_dir} into {args.readme}")


if __name__ == "__main__":
    main()
