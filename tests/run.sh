#!/usr/bin/env bash
# The whole test suite on a fresh Debian bookworm machine: installs what is missing
# (cached under $TUNEDECK_CACHE, default /var/cache/tunedeck), then runs pytest.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k services`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
start=$(date +%s)
eval "$(bash "$ROOT/.ci/setup.sh")"
echo "[run] setup took $(( $(date +%s) - start )) s" >&2
cd "$ROOT"
"$TUNEDECK_APP_VENV/bin/python" -m pytest tests "$@"
