#!/usr/bin/env bash
# Set everything up (idempotent) and run the demo. Extra arguments go to the demo,
# e.g. --app to open the FiftyOne App on the result.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export SAM31_SETUP_BROWSER="${SAM31_SETUP_BROWSER:-0}"  # the demo needs no browser
export SAM31_SETUP_SAM3="${SAM31_SETUP_SAM3:-0}"  # nor the sam3 test environment (setup for the tests adds it)
# shellcheck source=setup.sh
. "$repo/scripts/setup.sh"
cd "$repo"
exec sam31-video demo "$@"
