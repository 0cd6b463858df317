#!/usr/bin/env bash
# A Markdown comparison of the workspace against a git revision, for a pull request:
#   bash scripts/compare.sh REV [OUT_DIR]     (OUT_DIR defaults to compare/)
# writes OUT_DIR/compare.md (`dvc metrics diff --md`, `dvc params diff --md`, and
# `cxr compare REV --md`: every test metric's change with its paired bootstrap interval) and
# OUT_DIR/plots/index.html (`dvc plots diff`: REV's and the workspace's plots overlaid).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: bash scripts/compare.sh REV [OUT_DIR]" >&2
  exit 2
fi
rev=$1
out=${2:-compare}
if ! git rev-parse --verify --quiet "$rev^{commit}" >/dev/null; then
  echo "error: $rev: not a git revision here (a branch, tag or commit)" >&2
  exit 2
fi
[ -f .venv/bin/activate ] && source .venv/bin/activate
command -v dvc >/dev/null || { echo "error: dvc not found: run bash scripts/setup.sh" >&2; exit 1; }

mkdir -p "$out"
section() {  # a heading, then the table, or a line saying nothing changed
  echo "## $1"
  echo
  if [ -n "$2" ]; then echo "$2"; else echo "No change."; fi
  echo
}
metrics=$(dvc metrics diff "$rev" --md)
params=$(dvc params diff "$rev" --md)
# The paired bootstrap needs both runs' per-study outputs; without REV's (not in the cache, no
# remote), the section says why instead of failing the whole comparison.
if ! paired=$(cxr compare "$rev" --md 2>"$out/compare.err"); then
  paired="Not available: $(tail -n 1 "$out/compare.err")"
fi
rm -f "$out/compare.err"
dvc plots diff "$rev" -o "$out/plots" >/dev/null
{
  echo "# Workspace against \`$rev\` ($(git rev-parse --short "$rev"))"
  echo
  section "Metrics" "$metrics"
  section "Params" "$params"
  section "Paired bootstrap (test studies)" "$paired"
  echo "## Plots"
  echo
  echo "\`$out/plots/index.html\`: every plot of \`$rev\` and of the workspace, overlaid."
} > "$out/compare.md.tmp"
mv "$out/compare.md.tmp" "$out/compare.md"
echo "$out/compare.md"
