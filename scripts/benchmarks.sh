#!/usr/bin/env bash
# Regenerate BENCHMARKS.md: build the release binaries (`sheared-bench` times `sheared` in the runner
# area, so both), then run every `sheared-bench <area>` (each compares us with its named peer in the
# same run) and write the tables.
# Usage: scripts/benchmarks.sh [--only AREA ...] [--arg "AREA=ARGS" ...]   (passed to `sheared-bench all`)
# The eval area needs a model and tasks (and a Python with torch, transformers and lm-eval), e.g.
#   --arg "eval=--model MODEL_DIR --task lambada=TASKS/requests/lambada/bpb_0shot:100 --python VENV/bin/python"
# where MODEL_DIR is `sheared convert` of SmolLM2's GGUF and TASKS is `scripts/fetch-eval-tasks.sh --suite TASKS`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin sheared --bin sheared-bench
target_dir=${CARGO_TARGET_DIR:-target}
"$target_dir/release/sheared-bench" all --out BENCHMARKS.md "$@"
