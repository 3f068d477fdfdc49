"""Judge concurrency vs sequential calls against an OpenAI-compatible server on loopback.

    python scripts/bench_judge.py [--items 64] [--latency 0.05] [--concurrency 16]

The server (tests/fake_server.py's FakeServer) sleeps `latency` seconds per request, standing in for a
remote API's round trip. Caching is off so both runs pay for every call. Prints a table; no
assertions.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from realign.evals.judges import JudgeItem
from realign.evals.judges.openai_api import OpenAIJudge

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))   # the loopback stand-in lives with the tests
from fake_server import FakeServer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    server = FakeServer(latency=args.latency).start()
    items = [JudgeItem(f"question {i}?", f"a kind answer number {i}") for i in range(args.items)]
    rows = []
    try:
        for conc in (1, args.concurrency):
            judge = OpenAIJudge(model="bench", base_url=server.url, api_key="x", concurrency=conc, cache=False)
            t0 = time.time()
            out = judge.judge(items)
            dt = time.time() - t0
            assert all(j.aligned is not None for j in out)
            rows.append((conc, dt))
    finally:
        server.stop()
    calls = 2 * args.items
    print(f"| concurrency | calls | seconds | calls/s |   (server latency {args.latency * 1000:.0f} ms)")
    print("|---|---|---|---|")
    for conc, dt in rows:
        print(f"| {conc} | {calls} | {dt:.2f} | {calls / dt:.1f} |")
    print(f"\nspeed-up: {rows[0][1] / rows[1][1]:.1f}x")


if __name__ == "__main__":
    main()
