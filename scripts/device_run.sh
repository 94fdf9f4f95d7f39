#!/usr/bin/env bash
# Run a candle CUDA binary built by build_cuda.sh (copied over gzipped) on a GPU host with driver 580 + PyTorch cu130.
# usage: scripts/device_run.sh path/to/binary.gz|binary.xz args...
set -uo pipefail
GZ=$1; shift
BIN=${TMPDIR:-/tmp}/$(basename "$(basename "$GZ" .gz)" .xz)
case "$GZ" in
  *.xz) if command -v xz >/dev/null; then xz -dc "$GZ" > "$BIN"
        else python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],"wb"))' "$GZ" "$BIN"; fi ;;
  *) gzip -dc "$GZ" > "$BIN" ;;
esac
chmod +x "$BIN"
# cuBLAS/cuRAND/cudart (CUDA 13) come from the PyTorch cu130 wheels of the host's python3; libcuda.so.1 from the driver.
NVROOT=$(python3 -c 'import nvidia, os; print(list(nvidia.__path__)[0])' 2>/dev/null)
LIBDIRS=$(find "${NVROOT:?no python package nvidia on this host}" -name 'libcublas.so.13' -o -name 'libcudart.so.13' -o -name 'libcurand.so.10' \
          -o -name 'libcublasLt.so.13' 2>/dev/null | xargs -r -n1 dirname | sort -u | paste -sd:)
export LD_LIBRARY_PATH="$LIBDIRS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader
if ldd "$BIN" | grep 'not found'; then echo "missing libraries"; exit 3; fi
exec "$BIN" "$@"
