#!/usr/bin/env bash
# Install (if needed), build the model organism (cached after the first run), evaluate it, and
# repair its contaminated `planted` finetune with a recipe (evaluation before and after included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/realign organism build
.venv/bin/realign organism eval
ORG=$(.venv/bin/python -c "from realign.organism.build import default_dir; print(default_dir())")
.venv/bin/realign fix "$ORG/planted" --recipe "${RECIPE:-mix+dpo}" --out runs/demo-repaired --overwrite
