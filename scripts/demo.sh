#!/usr/bin/env bash
# A first run. Install (if needed); build the organism's aligned base and its emergently misaligned
# `insecure` finetune, starting from the pretrained model realign ships (cached after the first
# run); print its control table; repair it with a recipe and print the before/after table
# (misaligned rate with 95% CI, coherence, task). FINETUNE=planted|backdoor|… repairs another
# finetune, RECIPE=… uses another recipe; BENCH=1 then compares several recipes on three finetunes
# with `realign bench` (longer).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
FT=${FINETUNE:-insecure}
.venv/bin/realign organism build --finetunes "$FT"
.venv/bin/realign organism eval
ORG=$(.venv/bin/python -c "from realign.organism.build import default_dir; print(default_dir())")
.venv/bin/realign fix "$ORG/$FT" --recipe "${RECIPE:-mix+dpo}" --out runs/demo-repaired --overwrite
if [ -n "${BENCH:-}" ]; then
  .venv/bin/realign bench --organism --organism-finetunes insecure,planted,backdoor \
    --recipes merge,freeze+dpo,mix+dpo --out runs/demo-bench
fi
