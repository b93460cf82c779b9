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

TORCH_VERSION=2.11.0
VENV="${SHEARED_TORCH_VENV:-$PWD/.venv/torch}"

have_torch() {
    "$VENV/bin/python" - "$TORCH_VERSION" <<'EOF' 2>/dev/null
import sys, torch
sys.exit(torch.__version__.split("+")[0] != sys.argv[1])
EOF
}

if ! have_torch; then
    echo "test-libtorch: installing torch==$TORCH_VERSION into $VENV (about 3 GB from PyPI the first time)" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
fi

TORCH_LIB="$("$VENV/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"

# torch-sys asks this Python where torch's headers and libraries are. tch 0.22 expects torch 2.9.0;
# 2.11's C++ API compiles against it and the whole suite below is what says it also runs.
export VIRTUAL_ENV="$VENV"
export LIBTORCH_USE_PYTORCH=1
export LIBTORCH_BYPASS_VERSION_CHECK=1
# The binary links libtorch by name without an rpath.
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export SHEARED_DEVICE=torch-cpu

PATH="$VENV/bin:$PATH" cargo test --locked --features tch "$@"
