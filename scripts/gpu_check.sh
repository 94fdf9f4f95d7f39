#!/usr/bin/env bash
# One GPU session's checks, in order of importance, each under its own time limit so that a
# failure does not cost the others. Run from the repository root on a CUDA host that has the
# binaries built by scripts/build_cuda.sh, stripped and xz-compressed into .gpu/ (see docs/gpu.md):
#   check_device.xz bench_t5.xz bench_decode.xz train_beauty.xz
# Output goes to stdout and, when OUT is set, to $OUT/gpu.log; the figures, ours and PyTorch's from
# this same run, also to $OUT/gpu-check.json (scripts/gpu_figures.py), to be committed as
# docs/gpu-check.json.
set -uo pipefail
LOG=${OUT:-/tmp}/gpu.log
TRAIN_MINUTES=${TRAIN_MINUTES:-3}
EVAL_USERS=${EVAL_USERS:-2000}
DECODE=${DECODE:-1}   # 0 skips the decoding benchmark
TRAIN=${TRAIN:-1}     # 0 skips the composed system's training run
PYTORCH=${PYTORCH:-1} # 0 skips PyTorch + transformers on the same GPU (scripts/bench_hf_reference.py)
run() { # run SECONDS BINARY ARGS...
  local limit=$1 bin=$2; shift 2
  echo "=== $bin $* (limit ${limit}s) $(date -u +%T)" | tee -a "$LOG"
  timeout "$limit" bash scripts/device_run.sh ".gpu/$bin.xz" "$@" 2>&1 | grep -v '^LD_LIBRARY_PATH=' | tee -a "$LOG"
  echo "=== exit ${PIPESTATUS[0]} $(date -u +%T)" | tee -a "$LOG"
}
nproc | tee -a "$LOG"
run 90 check_device --device cuda --config tiny
run 90 check_device --device cuda --config t5-small
run 120 bench_t5 --device cuda --config t5-small --steps 5
run 60 bench_t5 --device cuda --config tiny --steps 5
[ "$DECODE" = 1 ] && run 120 bench_decode --device cuda --config all --repeats 3 --compare-cpu
if [ "$PYTORCH" = 1 ]; then
  echo "=== pytorch reference (limit 150s) $(date -u +%T)" | tee -a "$LOG"
  PYTHONUNBUFFERED=1 timeout 150 python3 scripts/bench_hf_reference.py --device cuda --repeats 5 \
    --config tiny --config t5-small --case 40x6 --case 20x20 --case 420x6 2>&1 | tee -a "$LOG"
  echo "=== exit ${PIPESTATUS[0]} $(date -u +%T)" | tee -a "$LOG"
fi
# The composed system on the GPU: t5-small from random weights (no hub access there), then the
# test split (EVAL_USERS users) with constrained decoding and exact top-n scoring.
[ "$TRAIN" = 1 ] && run $((TRAIN_MINUTES * 60 + 40 + EVAL_USERS / 12)) train_beauty --data-root data --out /tmp/beauty-gpu \
  --config t5-small --batch-size 64 --lr 1e-3 --seed 2022 --valid-users 1000 \
  --max-minutes "$TRAIN_MINUTES" --eval-users "$EVAL_USERS" --constrained
# Ours and PyTorch's figures of this run, paired, as one JSON file (and a Markdown table).
python3 scripts/gpu_figures.py "$LOG" "${OUT:-/tmp}/gpu-check.json" \
  --command "TRAIN_MINUTES=$TRAIN_MINUTES EVAL_USERS=$EVAL_USERS DECODE=$DECODE TRAIN=$TRAIN PYTORCH=$PYTORCH bash scripts/gpu_check.sh" \
  | tee -a "$LOG"
