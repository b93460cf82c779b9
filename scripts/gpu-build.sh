#!/usr/bin/env bash
# Builds the binaries that travel to a GPU machine: release, `--features tch` against the pinned
# PyPI torch in .venv/torch (the torch 2.11.0+cu130 build the GPU machines carry), stripped, at
# .gpu/sheared (the product) and .gpu/sheared-bench (the peer comparisons gpu-check.sh runs). The GPU machine needs nothing else from here but the repository:
#   scripts/gpu-build.sh && (on the GPU machine) scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/torch-env.sh
source scripts/torch-env.sh
cargo build --locked --release --features tch --bin sheared --bin sheared-bench
mkdir -p .gpu
release="${CARGO_TARGET_DIR:-target}/release"
for binary in sheared sheared-bench; do
    strip -o ".gpu/$binary" "$release/$binary"
done
ls -l .gpu/sheared .gpu/sheared-bench
size=$(($(stat -c %s .gpu/sheared) + $(stat -c %s .gpu/sheared-bench)))
# What travels to a GPU machine is limited to 64 MiB with the repository.
if [ "$size" -gt $((56 * 1024 * 1024)) ]; then
    echo "gpu-build: .gpu/sheared and .gpu/sheared-bench are $size bytes together; with the repository they may not fit the 64 MiB a GPU machine receives" >&2
    exit 1
fi
