#!/usr/bin/env bash
# Quick start 1/2: set up on a fresh machine, then run the CPU benchmark (every method on toy2d and
# digits at one matched FLOP budget, 5 seeds, each row paired to the teacher), writing tables and plots under results/.
set -euo pipefail
RTDMD_BENCH_EXTRAS="${RTDMD_BENCH_EXTRAS-}" source "$(dirname "$0")/setup.sh"  # the package alone is enough
cd "$(dirname "$0")/.."
exec "$PY" -m rtdmd_bench reproduce toy "$@"
