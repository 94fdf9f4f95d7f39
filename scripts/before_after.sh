#!/usr/bin/env bash
# Our CPU benchmarks from two builds, alternating in one sitting: the check that a change keeps
# the speed (and, through bench_decode's digests, the beam outputs). Copy each build's
# bench_t5 and bench_decode into a folder of its own first, e.g.
#   cargo build --release --example bench_t5 --example bench_decode
#   mkdir -p /tmp/new && cp target/release/examples/bench_{t5,decode} /tmp/new/
#   bash scripts/before_after.sh /tmp/old /tmp/new [PAIRS]     # default 3 pairs per case
# Takes ~10 minutes on 2 cores at 3 pairs. Prints one line per run; compare medians.
set -euo pipefail
OLD=$1 NEW=$2 PAIRS=${3:-3}
pick() { grep -o "$1" | paste -sd' '; }
# pairs LABEL PATTERN ARGS...: PAIRS rounds of the old build then the new one.
pairs() {
  local label=$1 pattern=$2; shift 2
  for _ in $(seq "$PAIRS"); do
    for side in OLD NEW; do
      dir=${!side}
      echo "$side $label $("$dir"/"$@" 2>&1 | pick "$pattern")"
    done
  done
}
echo "start $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
STEP='"target_len":[0-9]*\|"median_s_per_step":[0-9.]*'
BATCH='"seconds_per_batch":[0-9.]*\|"tokens_digest":"[0-9a-f]*"'
pairs "train tiny    " "$STEP" bench_t5 --config tiny --case 40x6 --case 20x20
pairs "train t5-small" "$STEP" bench_t5 --config t5-small --case 40x6
pairs "decode tiny    " "$BATCH" bench_decode --config tiny --repeats 5
pairs "decode t5-small" "$BATCH" bench_decode --config t5-small --repeats 3
echo "end $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
