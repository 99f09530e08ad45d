#!/usr/bin/env bash
# The whole test suite on a fresh Debian bookworm machine: installs what is missing
# (cached under $TUNEDECK_CACHE, default /var/cache/tunedeck), then runs pytest in two phases:
# every module not marked `serial` on $TUNEDECK_TEST_WORKERS workers (default 2: most tests wait on
# containers, tools and browsers, and one worker leaves a core idle about half the time), then the
# `serial` ones alone (they create Docker networks, which would abort another worker's browser).
# Extra arguments go to pytest in both phases, e.g. `bash tests/run.sh -k services`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
start=$(date +%s)
eval "$(bash "$ROOT/.ci/setup.sh")"
echo "[run] setup took $(( $(date +%s) - start )) s" >&2
cd "$ROOT"
PY="$TUNEDECK_APP_VENV/bin/python"
workers=${TUNEDECK_TEST_WORKERS:-2}
parallel=(-n "$workers" --dist loadfile --no-loadscope-reorder)
[ "$workers" -le 1 ] && parallel=()
# exit status 5 is "no test selected" (an -k that matches only one phase): not a failure unless both say it
rc1=0; "$PY" -m pytest tests "${parallel[@]}" -m "not serial" "$@" || rc1=$?
rc2=0; "$PY" -m pytest tests -m serial "$@" || rc2=$?
echo "[run] both phases took $(( $(date +%s) - start )) s" >&2
if [ "$rc1" -eq 5 ] && [ "$rc2" -eq 5 ]; then exit 5; fi
for rc in "$rc1" "$rc2"; do
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then exit "$rc"; fi
done
