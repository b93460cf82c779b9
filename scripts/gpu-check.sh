#!/usr/bin/env bash
# The one short check a GPU machine runs (under 10 minutes on an H100/H200), with a sheared binary
# built elsewhere against the same torch (scripts/gpu-build.sh puts stripped release builds in
# .gpu/sheared and .gpu/sheared-bench). It prints, and writes as JSON lines to $OUT/gpu-check.jsonl:
#   1. parity: the committed transformers fixtures scored on the GPU, on libtorch's CPU and as
#      transformers computed them (loss differences);
#   2. speed: a training step (forward + backward + AdamW) in bf16 at SmolLM2-135M's shape and at
#      Sheared-LLaMA-1.3B's shape (random weights), sheared against transformers' LlamaForCausalLM
#      (bf16 autocast, SDPA) on the same GPU in the same run: tokens/s and model FLOPs utilisation;
#   3. stages: a prune stage and a train stage in bf16 on a SmolLM2-135M-shaped model through
#      `sheared run`, with their wall time, the plan's peak-memory estimate and the peak GPU memory
#      nvidia-smi saw while they ran.
#
#   scripts/gpu-check.sh                        # on the GPU machine
#   DEVICE=torch-cpu QUICK=1 scripts/gpu-check.sh   # a small rehearsal on a CPU machine
#
# Environment: SHEARED_BIN (default .gpu/sheared), BENCH_BIN (default .gpu/sheared-bench), DEVICE (cuda:0), PYTHON (python3, the one with
# torch and transformers), OUT (gpu-check-out), PEAK_TFLOPS (989: dense bf16 of an H100/H200 SXM),
# QUICK=1 (tiny shapes, for rehearsals).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

BIN="${SHEARED_BIN:-$ROOT/.gpu/sheared}"
BENCH_BIN="${BENCH_BIN:-$ROOT/.gpu/sheared-bench}"
DEVICE="${DEVICE:-cuda:0}"
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-$ROOT/gpu-check-out}"
PEAK_TFLOPS="${PEAK_TFLOPS:-989}"
QUICK="${QUICK:-0}"
mkdir -p "$OUT"
REPORT="$OUT/gpu-check.jsonl"
: >"$REPORT"

say() { printf '%s\n' "$*" >&2; }
record() { printf '%s\n' "$1" | tee -a "$REPORT"; }

TORCH_LIB="$("$PYTHON" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')" || {
    say "gpu-check: $PYTHON cannot import torch; set PYTHON to the Python that has it"
    exit 1
}
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ -x "$BIN" ] || { say "gpu-check: no sheared binary at $BIN (scripts/gpu-build.sh makes one; or set SHEARED_BIN)"; exit 1; }
[ -x "$BENCH_BIN" ] || { say "gpu-check: no sheared-bench binary at $BENCH_BIN (scripts/gpu-build.sh makes one; or set BENCH_BIN)"; exit 1; }

say "== machine"
record "$("$PYTHON" - "$DEVICE" <<'EOF'
import json, sys, torch
device = sys.argv[1]
info = {"check": "machine", "torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
if device.startswith("cuda") and torch.cuda.is_available():
    index = int(device.split(":")[1]) if ":" in device else 0
    properties = torch.cuda.get_device_properties(index)
    info.update(gpu=properties.name, gpu_memory_bytes=properties.total_memory,
                multiprocessors=properties.multi_processor_count)
print(json.dumps(info))
EOF
)"

# Peak GPU memory used while a command runs (nvidia-smi every 100 ms; empty off a GPU).
peak_memory_during() {
    local samples="$OUT/memory-samples.txt" sampler=""
    : >"$samples"
    if [[ "$DEVICE" == cuda* ]] && command -v nvidia-smi >/dev/null; then
        local index="${DEVICE#cuda}"; index="${index#:}"; index="${index:-0}"
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i "$index" -lms 100 >"$samples" 2>/dev/null &
        sampler=$!
    fi
    "$@"
    local status=$?
    [ -n "$sampler" ] && kill "$sampler" 2>/dev/null && wait "$sampler" 2>/dev/null
    PEAK_MIB="$(sort -n "$samples" | tail -1)"
    return $status
}

say "== 1. parity with transformers on the committed fixtures"
for fixture in tests/fixtures/parity/*/; do
    name="$(basename "$fixture")"
    ids="$fixture/reference.json"
    [ -f "$ids" ] && [ -f "$fixture/config.json" ] || continue
    gpu="$("$BIN" score "$fixture" --token-ids "$ids" --device "$DEVICE" --json 2>&1)"
    cpu="$("$BIN" score "$fixture" --token-ids "$ids" --device torch-cpu --json 2>&1)"
    record "$("$PYTHON" - "$name" "$ids" "$gpu" "$cpu" <<'EOF'
import json, sys
name, ids, gpu, cpu = sys.argv[1:]
reference = json.load(open(ids))["mean_loss"]
def loss(text):
    try:
        return json.loads(text)["mean_loss"]
    except Exception:
        return text.strip().splitlines()[-1] if text.strip() else "no output"
g, c = loss(gpu), loss(cpu)
row = {"check": "parity", "fixture": name, "reference_loss": reference, "device_loss": g, "torch_cpu_loss": c}
if isinstance(g, float):
    row["device_minus_reference"] = g - reference
    if isinstance(c, float):
        row["device_minus_torch_cpu"] = g - c
print(json.dumps(row))
EOF
)"
done

say "== 2. training-step speed against PyTorch (bf16, same device, same run)"
if [ "$QUICK" = 1 ]; then
    shapes=("smollm2-like --vocab 2048 --hidden 192 --intermediate 512 --layers 2 --heads 3 --kv-heads 1 --tied --batch 2 --seq 128")
else
    shapes=(
        "smollm2-135m --vocab 49152 --hidden 576 --intermediate 1536 --layers 30 --heads 9 --kv-heads 3 --tied --batch 8 --seq 2048"
        "sheared-llama-1.3b --vocab 32000 --hidden 2048 --intermediate 5504 --layers 24 --heads 16 --batch 2 --seq 2048"
    )
fi
for shape in "${shapes[@]}"; do
    read -r label arguments <<<"$shape"
    # shellcheck disable=SC2086
    result="$("$BENCH_BIN" model $arguments --device "$DEVICE" --precision bf16 --python "$PYTHON" \
        --peak-tflops "$PEAK_TFLOPS" --steps 3 --warmup 1 --json 2>&1)"
    record "$("$PYTHON" - "$label" "$result" <<'EOF'
import json, sys
label, text = sys.argv[1:]
try:
    rows = json.loads(text[0 if text.startswith("[") else text.index("\n[") + 1:])
except Exception:
    print(json.dumps({"check": "speed", "shape": label, "error": text.strip().splitlines()[-3:]}))
    sys.exit()
# sheared-bench's result rows (src/bin/sheared-bench/row.rs), one per metric, each with its PyTorch peer.
row = {"check": "speed", "shape": label, "setup": rows[0].get("notes")}
for result in rows:
    key = f"{result['name']} {result['metric']}"
    peer = result.get("peer") or {}
    row[key] = {"sheared": result["value"], "torch": peer.get("value"), "unit": result["unit"],
                "ratio": result.get("ratio")}
    if result["metric"] == "peak RSS" and result.get("notes"):
        row[key]["notes"] = result["notes"]
print(json.dumps(row))
EOF
)"
done

say "== 3. prune and train stages in bf16 through sheared run"
if [ "$QUICK" = 1 ]; then
    source_shape='hidden_size = 192, intermediate_size = 512, num_hidden_layers = 2, num_attention_heads = 3, num_key_value_heads = 1'
    target='{ layers = 1, hidden = 128, heads = 3, intermediate = 256, kv_heads = 1 }'
    steps=2; batch=2; seq=64
else
    source_shape='hidden_size = 576, intermediate_size = 1536, num_hidden_layers = 30, num_attention_heads = 9, num_key_value_heads = 3'
    target='{ layers = 16, hidden = 384, heads = 6, intermediate = 1024, kv_heads = 2 }'
    steps=20; batch=8; seq=1024
fi
cat >"$OUT/recipe.toml" <<EOF
# Written by scripts/gpu-check.sh: a SmolLM2-135M-shaped source (random init, 2 steps), pruned to
# recipes/smollm2.toml's target and trained on, in bf16 on $DEVICE.
extends = "$ROOT/pipelines/sheared.toml"
name = "gpu-check"

[settings]
device = "$DEVICE"
precision = "bf16"

[stages.tokenize]
domains = { web = { path = "$ROOT/data/sample/web.jsonl" }, code = { path = "$ROOT/data/sample/code.jsonl" }, books = { path = "$ROOT/data/sample/books.jsonl" }, wikipedia = { path = "$ROOT/data/sample/wikipedia.jsonl" } }
tokenizer = { train = { vocab_size = 8192 } }
seq_len = $seq
eval_fraction = 0.1

[stages.source]
kind = "train"
init = { config = { $source_shape, tie_word_embeddings = true, max_position_embeddings = 2048 } }
data = { stage = "tokenize" }
steps = 2
batch_size = $batch
seq_len = $seq
lr = 1e-3
warmup_steps = 1
eval_batches = 1
loading = { policy = "uniform" }
exhaustion = "wrap"

[stages.eval-source]
seq_len = $seq
sequences_per_domain = 4
batch_size = $batch

[stages.prune]
target = $target
steps = $steps
batch_size = $batch
seq_len = $seq
eval_every = $steps
eval_batches = 1

[stages.train]
steps = $steps
batch_size = $batch
seq_len = $seq
warmup_steps = 1
eval_every = $steps
eval_batches = 1

[stages.eval]
seq_len = $seq
sequences_per_domain = 4
batch_size = $batch
EOF
export SHEARED_CACHE="$OUT/cache"
"$BIN" run "$OUT/recipe.toml" --only tokenize >"$OUT/run-tokenize.log" 2>&1 || say "tokenize failed: $(tail -3 "$OUT/run-tokenize.log")"
# check_stage LABEL STAGE FORCE [--set ...]: run STAGE alone (again if FORCE=1; the --set arguments go to
# both plan and run) and record its wall time, the plan's estimate and the peak GPU memory under LABEL.
check_stage() {
    local label=$1 stage=$2 force=()
    [ "$3" = 1 ] && force=(--force "$stage")
    shift 3
    # The plan once the stage's inputs exist: its memory estimate reads the real model config.
    "$BIN" plan "$OUT/recipe.toml" --json "$@" >"$OUT/plan.json" 2>"$OUT/plan.err" || say "plan failed: $(tail -3 "$OUT/plan.err")"
    started=$(date +%s.%N)
    peak_memory_during "$BIN" run "$OUT/recipe.toml" --only "$stage" "${force[@]}" "$@" >"$OUT/run-$label.log" 2>&1
    status=$?
    finished=$(date +%s.%N)
    record "$("$PYTHON" - "$label" "$stage" "$status" "$started" "$finished" "${PEAK_MIB:-}" "$OUT/plan.json" "$OUT/run-$label.log" <<'EOF'
import json, sys
label, stage, status, started, finished, peak_mib, plan_path, log_path = sys.argv[1:]
row = {"check": "stage", "stage": label, "ok": status == "0", "seconds": float(finished) - float(started)}
if peak_mib:
    row["peak_device_bytes_seen"] = int(peak_mib) * 2**20
try:
    for entry in json.load(open(plan_path))["stages"]:
        if entry["id"] == stage:
            row["estimate_bytes"] = entry.get("preview", {}).get("memory_bytes")
except Exception as error:
    row["plan_error"] = str(error)
if status != "0":
    row["log_tail"] = open(log_path, errors="replace").read().strip().splitlines()[-5:]
print(json.dumps(row))
EOF
)"
}
for stage in source prune train; do
    check_stage "$stage" "$stage" 0
done
# The same train stage again with AdamW's moments offloaded to the host: bit-identical, so the same
# cache key (hence --force); the peak should drop by about the moments' 8 bytes per parameter.
check_stage train-offload train 1 --set stages.train.optimizer_offload=true
say "== done: $REPORT"
