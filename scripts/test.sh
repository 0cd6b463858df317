#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite. Extra arguments go to pytest.
# The suite runs on every core (pytest-xdist); each module stays on one worker, and the modules
# go out longest first (tests/conftest.py). `-n 0` after it runs in one process, e.g. for `--pdb`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/system.sh
need_java
need_chromium
bash scripts/setup.sh
source .venv/bin/activate
ruff check .
pytest -n auto --dist loadgroup --no-loadscope-reorder "$@"
