#!/usr/bin/env bash
# Make .venv (Python 3.11) hold exactly the locked dependencies and this package.
# Does nothing when requirements.lock, pyproject.toml and this script are unchanged since the last run.
# Packages are compiled to bytecode at install: where PYTHONDONTWRITEBYTECODE is set (as on this
# project's machines) Python would otherwise compile TensorFlow's sources again in every process,
# ~9 s of CPU each time (`import tensorflow, keras`: 14 s without, 5 s with, on the 2-core EPYC).
set -euo pipefail
cd "$(dirname "$0")/.."

py=${PYTHON:-}
if [ -z "$py" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      py=$candidate; break
    fi
  done
fi
if [ -z "$py" ]; then
  echo "error: Python 3.11 not found; install it or set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

want=$(cat requirements.lock pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
stamp=.venv/.setup-stamp
[ -x .venv/bin/python ] || "$py" -m venv .venv
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setting up .venv from requirements.lock ..."
  .venv/bin/python -m pip install -q --disable-pip-version-check uv==0.13.9
  .venv/bin/uv pip install -q --python .venv/bin/python --compile-bytecode -r requirements.lock
  .venv/bin/uv pip install -q --python .venv/bin/python --no-deps -e .
  echo "$want" > "$stamp"
fi
