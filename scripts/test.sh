#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite. Extra arguments go to pytest.
# The suite runs on every core (pytest-xdist); each module (the pipeline-run modules together)
# stays on one worker, longest first (tests/conftest.py). `-n 0` runs in one process (`--pdb`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/system.sh
need_java
need_chromium
bash scripts/setup.sh
source .venv/bin/activate
ruff check .
pytest -n auto --dist loadgroup --no-loadscope-reorder "$@"
