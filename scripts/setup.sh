#!/usr/bin/env bash
# Set up (or reuse) a virtual environment with everything rtdmd-bench needs, on a fresh machine.
# torch/torchvision are installed FIRST, pinned, so nothing later replaces them with another build.
# Usage: source scripts/setup.sh   (sets $PY to the environment's python)
# RTDMD_BENCH_EXTRAS picks what is installed: "test" (default: every extra the tests use) or "" (the
# package alone: all the CPU benchmark needs, so `bash scripts/bench.sh` on a fresh machine skips
# diffusers, transformers, open_clip and pytest). An environment set up with "test" serves both.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RTDMD_BENCH_VENV:-$ROOT/.venv}"
TORCH_PIN="${RTDMD_BENCH_TORCH:-torch==2.14.1 torchvision==0.29.1}"
STAMP="$VENV/.rtdmd-bench-installed"
EXTRAS="${RTDMD_BENCH_EXTRAS-test}"
hash="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" | sha256sum | cut -c1-16)"
want="$hash:$EXTRAS"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV" >&2
  python3 -m venv "$VENV"
fi
if [ "$have" != "$want" ] && [ "$have" != "$hash:test" ]; then
  target="$ROOT${EXTRAS:+[$EXTRAS]}"
  echo "[setup] installing $TORCH_PIN, then rtdmd-bench${EXTRAS:+[$EXTRAS]} (a few minutes the first time)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" >&2 || true
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q $TORCH_PIN 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$VENV/bin/python" -m pip install -q -e "$target" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  check="import torch, rtdmd_bench${EXTRAS:+, diffusers, open_clip}"
  "$VENV/bin/python" -c "$check" \
    || { echo "[setup] installation failed: see the pip messages above" >&2; exit 1; }
  echo "$want" > "$STAMP"
fi
PY="$VENV/bin/python"
export PY
