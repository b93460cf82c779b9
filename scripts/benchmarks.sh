#!/usr/bin/env bash
# Regenerate BENCHMARKS.md: build the release binary, then run every `sheared bench <area>` it has
# (each compares us with its named peer in the same run) and write the table.
# Usage: scripts/benchmarks.sh [--only AREA ...]     (extra arguments go to `sheared benchmarks`)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
target_dir=${CARGO_TARGET_DIR:-target}
"$target_dir/release/sheared" benchmarks --out BENCHMARKS.md "$@"
