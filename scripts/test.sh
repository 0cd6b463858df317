#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/system.sh
need_java
need_chromium
bash scripts/setup.sh
source .venv/bin/activate
ruff check .
pytest "$@"
