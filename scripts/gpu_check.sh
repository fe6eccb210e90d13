#!/usr/bin/env bash
# The GPU path's checks, one verdict line each (under 8 minutes on one GPU); exits 1 if one
# failed. Without CUDA the CPU half runs and each CUDA check fails with a line saying so.
#   bash scripts/gpu_check.sh [--work DIR] [--limit N]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || { bash scripts/install.sh && PY=.venv/bin/python; }
HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 exec "$PY" scripts/gpu_check.py "$@"
