"""A stand-in SLURM for tests: `sbatch`, `srun`, `sacct` and `scancel` that run jobs on this machine.

Enough of each command for what submitit calls (sbatch FILE → "Submitted batch job N"; srun with
--output/--error patterns; sacct -o JobID,State,NodeList --parsable2 -j N…; scancel N), with the
SLURM_* variables a job reads. State lives in $FAKE_SLURM_DIR. `install(bin_dir, state_dir)` writes
the four commands as scripts; put bin_dir first on PATH.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

COMMANDS = ("sbatch", "srun", "sacct", "scancel")


def install(bin_dir: Path, state_dir: Path) -> dict[str, str]:
    """Write the commands into bin_dir; returns the environment variables that make them found."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    for name in COMMANDS:
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" {name} "$@"\n')
        path.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_DIR": str(state_dir)}


def _state() -> Path:
    return Path(os.environ["FAKE_SLURM_DIR"])


def sbatch(args: list[str]) -> None:
    script = Path(args[-1])
    counter = _state() / "next_id"
    job_id = int(counter.read_text()) if counter.exists() else 1000
    counter.write_text(str(job_id + 1))
    env = {**os.environ, "SLURM_JOB_ID": str(job_id), "SLURM_NTASKS": "1", "SLURM_JOB_NUM_NODES": "1",
           "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "localhost", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
    proc = subprocess.Popen([sys.executable, __file__, "_run", str(job_id), str(script)], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (_state() / f"{job_id}.pid").write_text(str(proc.pid))
    print(f"Submitted batch job {job_id}")


def _run(args: list[str]) -> None:
    job_id, script = args
    rc = subprocess.call(["bash", script])
    (_state() / f"{job_id}.rc").write_text(str(rc))


def srun(args: list[str]) -> None:
    files, i = {}, 0
    while i < len(args) and args[i].startswith("--"):
        if args[i] in ("--output", "--error"):
            files[args[i]] = args[i + 1]
            i += 2
        else:
            i += 1
    names = {"j": os.environ["SLURM_JOB_ID"], "t": os.environ["SLURM_PROCID"]}

    def expand(p: str) -> str:
        return re.sub(r"%([jt])", lambda m: names[m.group(1)], p)

    out = open(expand(files["--output"]), "ab")
    err = open(expand(files["--error"]), "ab") if "--error" in files else out
    sys.exit(subprocess.call(args[i:], stdout=out, stderr=err))


def sacct(args: list[str]) -> None:
    ids = [args[k + 1] for k, a in enumerate(args) if a == "-j"]
    print("JobID|State|NodeList")
    for job_id in ids:
        st = _state()
        if (st / f"{job_id}.cancelled").exists():
            state = "CANCELLED"
        elif (st / f"{job_id}.rc").exists():
            state = "COMPLETED" if (st / f"{job_id}.rc").read_text() == "0" else "FAILED"
        elif (st / f"{job_id}.pid").exists():
            state = "RUNNING"
        else:
            continue
        print(f"{job_id}|{state}|localhost")


def scancel(args: list[str]) -> None:
    job_id = args[0]
    pid = _state() / f"{job_id}.pid"
    if pid.exists():
        (_state() / f"{job_id}.cancelled").write_text("")
        try:
            os.killpg(int(pid.read_text()), signal.SIGTERM)
        except ProcessLookupError:
            pass


if __name__ == "__main__":
    {"sbatch": sbatch, "_run": _run, "srun": srun, "sacct": sacct, "scancel": scancel}[sys.argv[1]](sys.argv[2:])
