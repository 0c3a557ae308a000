#!/usr/bin/env bash
# Set everything up (idempotent) and run the benchmarks. Each prints its own baseline,
# measured in the same run, and the ratio against it.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=setup.sh
. "$repo/scripts/setup.sh"
cd "$repo"
export FIFTYONE_SHOW_PROGRESS_BARS=false
for bench in bench/bench_*.py; do
  echo "== $bench"
  python "$bench" "$@"
done
