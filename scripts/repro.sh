#!/usr/bin/env bash
# Set up .venv if needed, then run the whole DVC pipeline (on the embedded sample by default).
# Extra arguments go to `dvc repro`, e.g. `bash scripts/repro.sh train`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/system.sh
need_java
bash scripts/setup.sh
source .venv/bin/activate
dvc repro "$@"
if [ -f metrics/evaluate.json ]; then
  cxr scores metrics/evaluate.json   # every score; the headline ones: `dvc metrics show`
  echo "report: reports/test/index.html"
fi
