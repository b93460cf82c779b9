#!/usr/bin/env bash
# Regenerate BENCHMARKS.md: build the release binaries (`sheared-bench` times `sheared` in the runner
# area, so both), then run every `sheared-bench <area>` (each compares us with its named peer in the
# same run) and write the tables.
# Usage: scripts/benchmarks.sh [--only AREA ...] [--arg "AREA=ARGS" ...]   (passed to `sheared-bench all`)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin sheared --bin sheared-bench
target_dir=${CARGO_TARGET_DIR:-target}
"$target_dir/release/sheared-bench" all --out BENCHMARKS.md "$@"
