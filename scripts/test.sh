#!/usr/bin/env bash
# Quick start 2/2: set up on a fresh machine, then run the test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m "not slow"` for the quick subset).
set -euo pipefail
source "$(dirname "$0")/setup.sh"
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export RTDMD_BENCH_CACHE="${RTDMD_BENCH_CACHE:-$PWD/.cache/rtdmd-bench}"
export HF_HUB_OFFLINE=1
exec "$PY" -m pytest "$@"
