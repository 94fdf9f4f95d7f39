#!/usr/bin/env bash
# Runs our CPU benchmarks and their PyTorch + transformers counterparts alternately, in one
# sitting, and prints one line per run: on a shared machine only ratios measured this way mean
# anything (docs/performance.md, "Session 4").
#
#   pip install torch "transformers==4.57.1"
#   cargo build --release --example bench_t5 --example bench_decode
#   bash scripts/same_sitting.sh [PAIRS]        # default 3 pairs per comparison
#
# PYTHON selects the interpreter (default python3). Takes ~25 minutes on 2 cores; SKIP_DECODE=1
# leaves the decoding pairs out.
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${1:-3}
PY=${PYTHON:-python3}
BIN=target/release/examples
for b in bench_t5 bench_decode; do
  [[ -x $BIN/$b ]] || { echo "build first: cargo build --release --example $b" >&2; exit 1; }
done
pick() { grep -o "$1" | paste -sd' '; }
echo "start $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
for _ in $(seq "$PAIRS"); do
  echo "pytorch train tiny     $($PY scripts/bench_hf_reference.py --config tiny --what train --case 40x6 --case 20x20 2>/dev/null | pick '"target_len": [0-9]*\|"median_s_per_step": [0-9.]*')"
  echo "ours    train tiny     $($BIN/bench_t5 --config tiny --case 40x6 --case 20x20 2>&1 | pick '"target_len":[0-9]*\|"median_s_per_step":[0-9.]*')"
done
for _ in $(seq "$PAIRS"); do
  echo "pytorch train t5-small $($PY scripts/bench_hf_reference.py --config t5-small --what train 2>/dev/null | pick '"median_s_per_step": [0-9.]*')"
  echo "ours    train t5-small $($BIN/bench_t5 --config t5-small --case 40x6 2>&1 | pick '"median_s_per_step":[0-9.]*')"
done
# The top-n prompt shape (426 input tokens), which dominates training, at both batch sizes.
for batch in 64 32; do
  for _ in $(seq "$PAIRS"); do
    echo "pytorch train tiny 426x6 b$batch $($PY scripts/bench_hf_reference.py --config tiny --what train --case 426x6 --batch "$batch" 2>/dev/null | pick '"median_s_per_step": [0-9.]*')"
    echo "ours    train tiny 426x6 b$batch $($BIN/bench_t5 --config tiny --case 426x6 --batch "$batch" 2>&1 | pick '"median_s_per_step":[0-9.]*')"
  done
done
for _ in $(seq "$PAIRS"); do
  echo "pytorch train t5-small 426x6 b32 $($PY scripts/bench_hf_reference.py --config t5-small --what train --case 426x6 --batch 32 --repeats 2 2>/dev/null | pick '"median_s_per_step": [0-9.]*')"
  echo "ours    train t5-small 426x6 b32 $($BIN/bench_t5 --config t5-small --case 426x6 --batch 32 --steps 2 2>&1 | pick '"median_s_per_step":[0-9.]*')"
done
if [[ -z ${SKIP_DECODE:-} ]]; then
for _ in $(seq "$PAIRS"); do
  echo "pytorch decode tiny     $($PY scripts/bench_hf_reference.py --config tiny --what decode 2>/dev/null | pick '"seconds_per_batch": [0-9.]*')"
  echo "ours    decode tiny     $($BIN/bench_decode --config tiny --repeats 5 | pick '"seconds_per_batch":[0-9.]*')"
done
for _ in $(seq "$PAIRS"); do
  echo "pytorch decode t5-small $($PY scripts/bench_hf_reference.py --config t5-small --what decode --repeats 2 2>/dev/null | pick '"seconds_per_batch": [0-9.]*')"
  echo "ours    decode t5-small $($BIN/bench_decode --config t5-small --repeats 3 | pick '"seconds_per_batch":[0-9.]*')"
done
fi
echo "end $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
