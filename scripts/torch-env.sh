# Sourced by scripts/test-libtorch.sh and scripts/gpu-build.sh: makes (once) the project-local Python
# environment with the pinned PyPI torch that `--features tch` builds against, and exports what
# torch-sys and the built binary need. TORCH_VERSION is the build the GPU machines carry.
TORCH_VERSION=2.11.0
VENV="${SHEARED_TORCH_VENV:-$PWD/.venv/torch}"

if ! "$VENV/bin/python" - "$TORCH_VERSION" <<'PY' 2>/dev/null; then
import sys, torch
sys.exit(torch.__version__.split("+")[0] != sys.argv[1])
PY
    echo "installing torch==$TORCH_VERSION into $VENV (about 3 GB from PyPI the first time)" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
fi

TORCH_LIB="$("$VENV/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
# torch-sys asks this Python where torch's headers and libraries are. tch 0.22 expects torch 2.9.0;
# 2.11's C++ API compiles against it, and the whole test suite on torch-cpu is what says it runs.
export VIRTUAL_ENV="$VENV"
export LIBTORCH_USE_PYTORCH=1
export LIBTORCH_BYPASS_VERSION_CHECK=1
# The binary links libtorch by name without an rpath.
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$VENV/bin:$PATH"
