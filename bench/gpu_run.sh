#!/usr/bin/env bash
# One short GPU measurement (about 8 minutes at most on a current data-centre GPU), for a machine lent briefly:
#   env         torch / CUDA / device name
#   networks    per-network speed, released size, precision auto (bf16 autocast) and fp32, caches' savings,
#               share of the measured matmul peak
#   pipeline    offline pipeline, released size, 100 synthetic frames, reference demo parameters:
#               FPS at 224 px, peak device memory, device name
#   streaming   the bundled model streaming 300 frames: FPS
#   precision   bf16 vs fp32 per-point deviation of the whole pipeline on this device
# Each step has its own time limit, so one slow step cannot eat the others' time; status.txt records every step's
# exit status and the logs sit beside it.
#
#   bash bench/gpu_run.sh [OUT_DIR]          # default OUT_DIR: $OUT if set, else gpu_results
#   DRY_RUN=1 bash bench/gpu_run.sh DIR      # tiny networks on the CPU, same steps (what the test runs)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-gpu_results}}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ "${DRY_RUN:-0}" = 1 ]; then
  DEV=cpu SIZE=tiny FRAMES=16 STREAM=16 REPEAT=1 LIMIT=600
else
  DEV=cuda SIZE=released FRAMES=100 STREAM=300 REPEAT=3 LIMIT=0
fi
: > "$OUT_DIR/status.txt"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT_DIR/NAME.log, record the status
  local name=$1 limit=$2
  shift 2
  [ "$LIMIT" -gt 0 ] && limit=$LIMIT
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  local rc=$?
  echo "$name $rc" >> "$OUT_DIR/status.txt"
  grep -E "FPS|GFLOP/s|caching saves|faster|deviation|PASS|FAIL" "$OUT_DIR/$name.log" | tail -n 8
  [ $rc -ne 0 ] && tail -n 5 "$OUT_DIR/$name.log"
  return 0
}

step env 60 "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda); \
print('device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu only')"
step networks_auto 75 "$PY" bench/bench_networks.py --size "$SIZE" --device "$DEV" --precision auto \
  --repeat "$REPEAT" --no-naive --cache
step networks_fp32 60 "$PY" bench/bench_networks.py --size "$SIZE" --device "$DEV" --precision fp32 \
  --repeat "$REPEAT" --no-naive
step pipeline 150 "$PY" bench/bench_pipeline.py --size "$SIZE" --device "$DEV" --precision auto \
  --frames "$FRAMES" --no-naive --params reference
step streaming 60 "$PY" bench/bench_pipeline.py --weights default --device "$DEV" --precision auto \
  --mode streaming --frames "$STREAM" --no-naive --params bundled
step precision 120 "$PY" bench/bench_precision.py --check deviation --size "$SIZE" --device "$DEV" \
  --frames "$FRAMES"
echo "== status (step exit code)"
cat "$OUT_DIR/status.txt"
