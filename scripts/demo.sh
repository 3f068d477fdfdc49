#!/usr/bin/env bash
# Install (if needed), build the model organism (cached after the first run), evaluate it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/realign organism build
.venv/bin/realign organism eval
