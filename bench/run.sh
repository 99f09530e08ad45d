#!/usr/bin/env bash
# Run every benchmark (or the ones named: `bash bench/run.sh logs status`) with the cached
# test toolchain; each prints one line with its figures and its ratio against a baseline
# measured in the same run.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
eval "$(bash "$ROOT/.ci/setup.sh")"
cd "$ROOT/bench"
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(logs status fanout upload export training_log load loop quant_report chat auth storage)
for name in "${names[@]}"; do
  "$TUNEDECK_APP_VENV/bin/python" "$name.py" 2>&1 | grep -E "^\[$name\]" || { echo "[$name] FAILED"; exit 1; }
done
