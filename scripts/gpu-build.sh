#!/usr/bin/env bash
# Builds the sheared binary that travels to a GPU machine: release, `--features tch` against the
# pinned PyPI torch in .venv/torch (the torch 2.11.0+cu130 build the GPU machines carry), stripped,
# at .gpu/sheared. The GPU machine needs nothing else from here but the repository:
#   scripts/gpu-build.sh && (on the GPU machine) scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/torch-env.sh
source scripts/torch-env.sh
cargo build --locked --release --features tch
mkdir -p .gpu
target="${CARGO_TARGET_DIR:-target}/release/sheared"
strip -o .gpu/sheared "$target"
ls -l .gpu/sheared
size=$(stat -c %s .gpu/sheared)
# What travels to a GPU machine is limited to 64 MiB with the repository.
if [ "$size" -gt $((56 * 1024 * 1024)) ]; then
    echo "gpu-build: .gpu/sheared is $size bytes; with the repository it may not fit the 64 MiB a GPU machine receives" >&2
    exit 1
fi
