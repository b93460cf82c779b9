#!/usr/bin/env bash
# The libtorch half of the tests: the whole test suite again, built with `--features tch` and run on
# libtorch's CPU device (`torch-cpu`), the same backend that runs on CUDA GPUs.
#
#   scripts/test-libtorch.sh                 # everything
#   scripts/test-libtorch.sh --test model_parity   # extra arguments go to `cargo test`
#
# It makes (once) a project-local Python environment `.venv/torch` holding the pinned PyPI torch
# (2.11.0, the build the GPU machines carry; pip keeps the wheels in its cache for the next run),
# points torch-sys at it, and sets SHEARED_DEVICE=torch-cpu, which the tests and the binary read as
# their default device. `.ci/run` calls it after the pure-Rust half.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/torch-env.sh
source scripts/torch-env.sh
export SHEARED_DEVICE=torch-cpu

cargo test --locked --features tch "$@"
