#!/usr/bin/env bash
# The README's test command: every crate's tests (release profile), then the Python module's
# (built as a wheel into a throw-away virtual environment: crates/python/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release
bash crates/python/test.sh
