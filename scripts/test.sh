#!/usr/bin/env bash
# Set everything up (idempotent) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=setup.sh
. "$repo/scripts/setup.sh"
cd "$repo"
exec python -m pytest "$@"
