#!/usr/bin/env bash
# scripts/gpu_bench.py on the lent GPU machine, one section per step, each under its own time
# limit so that one slow section cannot cost the others' figures (about 8 minutes in all):
#   device run: bash .device/run.sh bash scripts/gpu_bench.sh   (carry [".device"], timeout 540)
# Writes each section's log and summary.txt under $OUT (default ./gpu-bench-out) and prints the
# summary. PYTHON: the interpreter (.device/run.sh sets it).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-bench-out}; mkdir -p "$OUT"; S=$OUT/summary.txt; : > "$S"
PY=${PYTHON:-python3}; W=${WORK:-/tmp/gpu-bench}
step() { local n=$1 lim=$2 t=$SECONDS; shift 2
  timeout -k 5 "$lim" "$@" > "$OUT/$n.log" 2>&1; local rc=$?
  echo "== $n rc=$rc $((SECONDS - t))s" >> "$S"
  grep -E "^(setup|floors|merge|equal|eval|fused|e2e|memory) |FAILED|Error" "$OUT/$n.log" \
    | head -60 >> "$S"; }
step env 25 "$PY" -c "import torch; print('setup ', torch.cuda.get_device_name(), torch.__version__)"
step merge 110 "$PY" scripts/gpu_bench.py --work "$W" --sections merge
step eval 110 "$PY" scripts/gpu_bench.py --work "$W" --sections eval
step e2e 130 "$PY" scripts/gpu_bench.py --work "$W" --sections e2e
step equal 90 "$PY" scripts/gpu_bench.py --work "$W" --sections equal
step fused 30 "$PY" scripts/gpu_bench.py --work "$W" --sections fused
cat "$S"
