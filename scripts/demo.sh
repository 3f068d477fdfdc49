#!/usr/bin/env bash
# Install (if needed), build the model organism (cached after the first run), evaluate it, and
# repair its emergently misaligned `insecure` finetune with a recipe (evaluation before and after
# included). FINETUNE=planted repairs the contaminated one instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/realign organism build
.venv/bin/realign organism eval
ORG=$(.venv/bin/python -c "from realign.organism.build import default_dir; print(default_dir())")
.venv/bin/realign fix "$ORG/${FINETUNE:-insecure}" --recipe "${RECIPE:-mix+dpo}" --out runs/demo-repaired --overwrite
