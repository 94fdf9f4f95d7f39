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
echo "start $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
for _ in $(seq "$PAIRS"); do
  for side in OLD NEW; do
    dir=${!side}
    echo "$side train tiny     $("$dir"/bench_t5 --config tiny --case 40x6 --case 20x20 2>&1 | pick '"target_len":[0-9]*\|"median_s_per_step":[0-9.]*')"
  done
done
for _ in $(seq "$PAIRS"); do
  for side in OLD NEW; do
    dir=${!side}
    echo "$side train t5-small $("$dir"/bench_t5 --config t5-small --case 40x6 2>&1 | pick '"median_s_per_step":[0-9.]*')"
  done
done
for _ in $(seq "$PAIRS"); do
  for side in OLD NEW; do
    dir=${!side}
    echo "$side decode tiny     $("$dir"/bench_decode --config tiny --repeats 5 | pick '"seconds_per_batch":[0-9.]*\|"tokens_digest":"[0-9a-f]*"')"
  done
done
for _ in $(seq "$PAIRS"); do
  for side in OLD NEW; do
    dir=${!side}
    echo "$side decode t5-small $("$dir"/bench_decode --config t5-small --repeats 3 | pick '"seconds_per_batch":[0-9.]*\|"tokens_digest":"[0-9a-f]*"')"
  done
done
echo "end $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
