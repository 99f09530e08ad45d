#!/usr/bin/env bash
# Refresh the README's screenshots (tests/screenshots/*.png) from the browser tests that take them.
# The normal test run writes screenshots to a temporary folder and never touches tracked files.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export TUNEDECK_SCREENSHOTS="$ROOT/tests/screenshots"
bash "$ROOT/tests/run.sh" -k "test_every_tab_through_caddy or test_tool_tabs_load_through_caddy or \
test_browser_sees_new_points or test_export_tab_in_the_browser or test_side_by_side_streams_both_columns" "$@"
ls -l "$TUNEDECK_SCREENSHOTS"
