#!/usr/bin/env bash
# Set everything up (idempotent) and run every benchmark of the client's own work
# (bench/run.py): writes BENCHMARKS.md and bench/results.json, each figure beside its
# baseline measured in the same run. Arguments go to bench/run.py (e.g. --quick).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=setup.sh
. "$repo/scripts/setup.sh"
cd "$repo"
export FIFTYONE_SHOW_PROGRESS_BARS=false
python bench/run.py "$@"
