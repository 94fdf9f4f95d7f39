#!/usr/bin/env bash
# Builds the Python module `peapod` as a wheel, installs it into a throw-away virtual
# environment (maturin, numpy and pytest from PyPI) and runs its pytest suite against the
# repository's shipped data. Part of the README's test command (`scripts/test.sh`).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
"$python" -m venv "$scratch/venv"
"$scratch/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$here/requirements-test.txt"
# Release profile and the workspace's target directory: the dependencies `cargo test
# --release` built are reused.
"$scratch/venv/bin/maturin" build --release --manifest-path "$here/Cargo.toml" \
    --interpreter "$scratch/venv/bin/python" --out "$scratch/wheels"
"$scratch/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-index "$scratch"/wheels/peapod-*.whl
# The Rust `evaluate` example, which the tests compare the module's evaluation with.
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --example evaluate
# From outside the source tree, so that `import peapod` is the installed wheel.
cd "$scratch"
PEAPOD_DATA="$root/data" PEAPOD_EVALUATE="$root/target/release/examples/evaluate" \
    "$scratch/venv/bin/python" -m pytest -q -p no:cacheprovider "$here/tests"
