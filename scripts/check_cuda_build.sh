#!/usr/bin/env bash
# Builds `--features cuda` (examples included) from a fresh clone of this repository's HEAD, as a
# new user would: nothing from this working tree but what git holds. The CUDA toolkit wheels are
# kept in PEAPOD_CUDA_CACHE (default ~/.cache/peapod-cuda13) so that a second check costs the
# compile only. Prints the commit and the build time; exits non-zero when the build fails.
#   bash scripts/check_cuda_build.sh
set -euo pipefail
REPO=$(git rev-parse --show-toplevel)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
git clone -q "$REPO" "$WORK/clone"
cd "$WORK/clone"
export PEAPOD_CUDA_CACHE=${PEAPOD_CUDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/peapod-cuda13}
start=$(date +%s)
bash scripts/build_cuda.sh --examples
echo "fresh-clone CUDA build of $(git rev-parse --short HEAD) succeeded in $(( $(date +%s) - start )) s (toolkit cache: $PEAPOD_CUDA_CACHE)"
