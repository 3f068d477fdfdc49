"""Check that `realign fix` trains dpo and mix under `accelerate launch` with 2 processes.

    python scripts/accelerate_check.py [--organism DIR] [--processes 2] [--config configs/accelerate/ddp.yaml]
    python scripts/accelerate_check.py --fsdp       # configs/accelerate/fsdp.yaml: weights sharded while training

Builds the small organism unless --organism names one (about 10 s on 2 cores: a real tiny
finetune pair with its exported training data), then runs, as a user would:

    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2 \\
        -m realign.cli fix ORG/planted --recipe dpo+mix --judge openai --judge-url URL --out OUT …

The judge is a local OpenAI-compatible stand-in (tests/fake_server.py's FakeServer) that calls an answer
misaligned when the judge prompt has an odd length, so that dpo finds (aligned base, misaligned
finetune) pairs whatever the small organism says; the check is about the training, not the verdicts.
Without CUDA the processes train on the CPU over gloo. Checks: the launcher exits 0; every rank
finished its steps (each non-zero rank says so on stderr); rank 0 alone wrote OUT, whose
realign.json records both steps trained on all processes. With --fsdp (on a CPU machine through
tests/cpu_fsdp.py, which lets accelerate use FSDP on gloo): both steps also record that they trained
sharded, with rank 0 holding about 1/processes of the weights. Prints the wall time; exit status 1 on
any failed check.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))      # this checkout's realign, in this process and (PYTHONPATH) the launched ones
sys.path.insert(1, str(ROOT / "tests"))    # the loopback judge stand-in (fake_server.py)


def parity_judge_server():
    from fake_server import FakeServer

    class ParityServer(FakeServer):
        @staticmethod
        def distribution(prompt: str) -> dict[str, float]:
            if "coheren" in prompt.lower():
                return {"90": 1.0}
            return {"5": 1.0} if len(prompt) % 2 else {"95": 1.0}

    return ParityServer().start()


def launch_command(org: Path, out: Path, processes: int, config: Path, judge_url: str, fsdp: bool) -> list[str]:
    import torch

    accelerate = Path(sys.executable).with_name("accelerate")
    launcher = [str(accelerate), "launch"] if accelerate.exists() else [sys.executable, "-m", "accelerate.commands.launch"]
    # without CUDA, accelerate drops FSDP (tests/cpu_fsdp.py says where): the shim switches it back on
    program = [str(ROOT / "tests" / "cpu_fsdp.py")] if fsdp and not torch.cuda.is_available() else ["-m", "realign.cli"]
    return [*launcher, "--config_file", str(config), "--num_processes", str(processes), *program, "fix", str(org / "planted"), "--recipe", "dpo+mix",
            "--set", "dpo.steps=4", "--set", "dpo.batch_size=4", "--set", "mix.steps=4", "--set", "mix.batch_size=8",
            "--set", "mix.kl=0.5", "--set", "dpo.samples=1", "--set", "mix.samples=1",
            "--judge", "openai", "--judge-url", judge_url,
            "--samples", "1", "--max-new-tokens", "16", "--no-eval-cache", "--out", str(out)]


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc), deepest first."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [*_descendants(child), child]
    return found


def check(org: Path, processes: int, config: Path, workdir: Path, fsdp: bool = False,
          timeout: float = 420) -> tuple[float, list[str]]:
    """(wall seconds, failed checks) of one launched fix."""
    out = workdir / "repaired"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "REALIGN_PROGRESS": "0",
           "REALIGN_CACHE": str(workdir / "cache"),      # the stand-in judge's verdicts stay out of the user's cache
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    server = parity_judge_server()
    try:
        t0 = time.time()
        cmd = launch_command(org, out, processes, config, server.url, fsdp)
        # a rank stuck at a collective the others never reach is stopped after `timeout`, with the launcher
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for pid in [*_descendants(proc.pid), proc.pid]:    # torchrun starts each rank in a session of its own
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.communicate()
            return time.time() - t0, [f"the launched fix did not finish in {timeout:.0f} s (a rank hung)"]
        res = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
        wall = time.time() - t0
    finally:
        server.stop()
    failed = []
    if res.returncode != 0:
        failed.append(f"launcher exited {res.returncode}:\n{res.stderr[-3000:]}")
        return wall, failed
    done = set(re.findall(r"rank (\d+): repair steps done", res.stderr))
    if done != {str(r) for r in range(1, processes)}:
        failed.append(f"ranks that reported their steps done: {sorted(done)}")
    meta_path = out / "realign.json"
    if not meta_path.exists():
        failed.append(f"rank 0 wrote no {meta_path}")
        return wall, failed
    meta = json.loads(meta_path.read_text())
    steps = [h["step"] for h in meta["history"]]
    if steps != ["dpo", "mix"]:
        failed.append(f"history has steps {steps}, not dpo and mix")
    for h in meta["history"]:
        if h.get("skipped") or h.get("processes") != processes:
            failed.append(f"{h['step']} did not train on {processes} processes: {h}")
        held = h.get("sharded_fraction")
        if fsdp and (h.get("sharding") != "fsdp" or held is None or abs(held - 1 / processes) > 0.1 / processes):
            failed.append(f"{h['step']} did not train sharded (rank 0 should hold ~1/{processes} of the weights): {h}")
        if not fsdp and "sharding" in h:
            failed.append(f"{h['step']} trained sharded under a DDP config: {h}")
    if not any(out.glob("*.safetensors")):
        failed.append("no weights in the output")
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(".repaired.")]
    if leftovers:
        failed.append(f"temporary dirs left behind: {leftovers}")
    return wall, failed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--organism", type=Path, help="a built organism (default: build the small one)")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--config", type=Path, help="accelerate config (default: configs/accelerate/ddp.yaml, "
                                               "or fsdp.yaml with --fsdp)")
    ap.add_argument("--fsdp", action="store_true", help="shard the weights while dpo and mix train (FSDP2)")
    args = ap.parse_args()
    config = args.config or ROOT / "configs" / "accelerate" / ("fsdp.yaml" if args.fsdp else "ddp.yaml")
    workdir = Path(tempfile.mkdtemp(prefix="realign-accelerate-"))
    try:
        org = args.organism
        if org is None:
            from realign.organism.build import build

            org = build(workdir / "organism", seed=0, size="small")
        wall, failed = check(org, args.processes, config, workdir, args.fsdp)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"accelerate launch ({config.name}), {args.processes} processes, fix --recipe dpo+mix: {wall:.1f} s "
          f"({'ok' if not failed else 'FAILED'})")
    for f in failed:
        print(f"  - {f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
