#!/usr/bin/env bash
# GPU check: runs the model code a shard worker runs (a `Shard` loaded from a checkpoint and
# its forward; not the worker process or its gRPC hop) on CUDA in f32 and bf16 for a
# ~125M-parameter NeuroLLM, compares its logits with the CPU f32 path, measures greedy decode
# tokens/s and training-step MFU on CUDA, and prints one JSON summary plus one human line on
# stdout (progress goes to stderr). With OUT set, the JSON is also written to
# $OUT/gpu-check.json.
#
# Exit status: 0 every check passed; 1 a check failed or a step broke; 2 no NVIDIA GPU (the
# check never falls back to the CPU).
#
# Environment:
#   PEAK_FLOPS      peak dense bf16 FLOP/s of the GPU (default: from the table below by name)
#   NEUROSHARD_BIN  a built `neuroshard` binary to use instead of building one here
#   TRAIN_BATCH / TRAIN_SEQ   training-step shape (default 8 x 1024)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=env.sh
source scripts/env.sh

say() { echo "==> $*" >&2; }
die() {
  echo "gpu-check: $*" >&2
  exit 1
}
no_gpu() {
  echo "no NVIDIA GPU: $* (scripts/gpu-check.sh measures the CUDA path only and never falls back to the CPU)" >&2
  exit 2
}

# --- 1. The GPU -------------------------------------------------------------------------------
command -v nvidia-smi >/dev/null 2>&1 || no_gpu "nvidia-smi is not on PATH"
if ! smi="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"; then
  no_gpu "nvidia-smi failed: $smi"
fi
smi="$(printf '%s\n' "$smi" | head -n 1)"
gpu_name="$(printf '%s' "$smi" | cut -d, -f1 | sed 's/^ *//; s/ *$//')"
[ -n "$gpu_name" ] || no_gpu "nvidia-smi lists no GPU"
gpu_memory="$(printf '%s' "$smi" | cut -d, -f2 | sed 's/^ *//; s/ *$//')"
gpu_driver="$(printf '%s' "$smi" | cut -d, -f3 | sed 's/^ *//; s/ *$//')"

# Peak dense (no sparsity) bf16 tensor-core FLOP/s from the vendors' data sheets. Order matters:
# NVL and PCIe variants before their SXM name (*H200* also matches GH200); L4 and A10 are
# matched at the end of the name only, so L40S, A100 and A10G do not fall into them.
peak_for() {
  case "$1" in
    *H200*NVL* | *H100*NVL*) echo 835e12 ;;
    *H100*PCIe*) echo 756e12 ;;
    *H200* | *H100*) echo 989e12 ;; # GH200 too
    *B200*) echo 2250e12 ;;
    *A100*) echo 312e12 ;;
    *L40S*) echo 362e12 ;;
    *L4) echo 121e12 ;;
    *A10) echo 125e12 ;;
    *) return 1 ;;
  esac
}
if [ -n "${PEAK_FLOPS:-}" ]; then
  peak="$PEAK_FLOPS"
  peak_source="PEAK_FLOPS"
elif peak="$(peak_for "$gpu_name")"; then
  peak_source="table"
else
  die "no peak bf16 FLOP/s known for \`$gpu_name\`: set PEAK_FLOPS (dense bf16 FLOP/s, e.g. 989e12)"
fi
say "GPU: $gpu_name ($gpu_memory, driver $gpu_driver); peak bf16 dense $peak FLOP/s ($peak_source)"

python="python3"
if [ -x "$PY_ENV/bin/python" ]; then
  python="$PY_ENV/bin/python"
fi

# --- 2. Binaries ------------------------------------------------------------------------------
if [ -n "${NEUROSHARD_BIN:-}" ]; then
  bin="$NEUROSHARD_BIN"
else
  say "building target/release/neuroshard"
  scripts/cargo.sh build --release -p neuroshard-cli >&2
  bin="target/release/neuroshard"
fi
[ -x "$bin" ] || die "no neuroshard binary at $bin"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Runs the binary with stdout into $work/$1.json; on failure shows its stderr and stops.
step() {
  local name="$1"
  shift
  if ! "$bin" "$@" >"$work/$name.json" 2>"$work/$name.err"; then
    cat "$work/$name.err" >&2
    if grep -q "CUDA device(s) are available" "$work/$name.err"; then
      die "$name: the binary's libtorch sees no CUDA device although nvidia-smi lists $gpu_name (a CPU-only libtorch, or a driver too old for its CUDA)"
    fi
    die "$name: \`neuroshard $*\` failed"
  fi
}

# --- 3. A ~125M-parameter NeuroLLM ------------------------------------------------------------
# GPT-2-small scale in NeuroLLM's Llama layout: 12 layers x 768, 12 heads / 4 KV heads (GQA),
# SwiGLU 2048, vocabulary 32,000 (untied embedding and head): 124,668,672 parameters.
shape=(--layers 12 --hidden 768 --heads 12 --kv-heads 4)
vocab=32000
say "initialising the checkpoint (${shape[*]} --vocab $vocab)"
"$bin" model init --out "$work/ckpt" "${shape[@]}" --vocab "$vocab" --max-seq-len 1024 --seed 0 >&2
step info model info --checkpoint "$work/ckpt"

# --- 4. Logits: CUDA f32 / bf16 against CPU f32 -----------------------------------------------
positions=64
tokens="$("$python" -c "import random; r = random.Random(0); print(','.join(str(r.randrange($vocab)) for _ in range($positions)))")"
say "logits of $positions positions: CPU f32, CUDA f32 (whole, and as two shards 0-6,6-12), CUDA bf16"
step logits-cpu-f32 model logits --checkpoint "$work/ckpt" --tokens "$tokens" --device cpu --dtype f32
step logits-cuda-f32 model logits --checkpoint "$work/ckpt" --tokens "$tokens" --device cuda --dtype f32
step logits-cuda-f32-shards model logits --checkpoint "$work/ckpt" --tokens "$tokens" --device cuda --dtype f32 --shards 0-6,6-12
step logits-cuda-bf16 model logits --checkpoint "$work/ckpt" --tokens "$tokens" --device cuda --dtype bf16

# --- 5. Decode tokens/s on CUDA ---------------------------------------------------------------
for dtype in bf16 f32; do
  say "decode: 32-token prompt, 256 greedy tokens, CUDA $dtype"
  step "decode-$dtype" bench decode --checkpoint "$work/ckpt" --device cuda --dtype "$dtype" \
    --prompt-len 32 --tokens 256 --warmup 1 --rounds 3
done

# --- 6. Training-step MFU on CUDA -------------------------------------------------------------
batch="${TRAIN_BATCH:-8}"
seq="${TRAIN_SEQ:-1024}"
for dtype in bf16 f32; do
  say "training step: batch $batch x $seq, CUDA $dtype"
  step "train-$dtype" bench train-step "${shape[@]}" --vocab "$vocab" --batch-size "$batch" \
    --seq-len "$seq" --warmup 3 --steps 10 --device cuda --dtype "$dtype"
done

# --- 7. Summary -------------------------------------------------------------------------------
summary="$(
  WORK="$work" GPU_NAME="$gpu_name" GPU_MEMORY="$gpu_memory" GPU_DRIVER="$gpu_driver" \
    PEAK="$peak" PEAK_SOURCE="$peak_source" SEQ="$seq" "$python" - <<'PY'
import json, os

work = os.environ["WORK"]
def load(name):
    with open(os.path.join(work, name + ".json")) as f:
        return json.load(f)

info = load("info")
config, params = info["config"], info["parameters"]
reference = load("logits-cpu-f32")["logits"]
ref_scale = max(1.0, max(abs(v) for row in reference for v in row))

def argmax(row):
    return max(range(len(row)), key=row.__getitem__)

ref_top1 = [argmax(row) for row in reference]

# Pass rules. f32 on CUDA runs the same arithmetic in another order: its max |difference| must
# stay under 1e-3 of the logits' scale (max |logit|, at least 1) and its top-1 token may differ
# only at a near tie (>= 0.98 of positions: one of 64). bf16 keeps 8 bits of mantissa, so its
# logits move by about 1e-2 of their scale after 12 layers: it must agree on the top-1 token at
# >= 0.9 of positions and stay within 0.1 of the scale.
rules = {
    "cuda_f32": (1e-3, 0.98),
    "cuda_f32_two_shards": (1e-3, 0.98),
    "cuda_bf16": (1e-1, 0.90),
}
logits = {"positions": len(reference), "reference": "cpu f32", "reference_scale": ref_scale}
for name, file in [("cuda_f32", "logits-cuda-f32"), ("cuda_f32_two_shards", "logits-cuda-f32-shards"),
                   ("cuda_bf16", "logits-cuda-bf16")]:
    rows = load(file)["logits"]
    max_abs = max(abs(a - b) for ra, rb in zip(rows, reference) for a, b in zip(ra, rb))
    top1 = sum(argmax(r) == t for r, t in zip(rows, ref_top1)) / len(reference)
    rel_bound, top1_bound = rules[name]
    logits[name] = {
        "max_abs_diff": max_abs,
        "max_abs_diff_bound": rel_bound * ref_scale,
        "top1_agreement": top1,
        "top1_agreement_bound": top1_bound,
        "pass": max_abs <= rel_bound * ref_scale and top1 >= top1_bound,
    }

decode = {}
for dtype in ("bf16", "f32"):
    d = load("decode-" + dtype)
    decode[dtype] = {k: d[k] for k in ("decode_tokens_per_s", "prefill_ms", "prompt_tokens", "decode_tokens", "rounds")}

peak = float(os.environ["PEAK"])
seq = int(os.environ["SEQ"])
# Model FLOPs per trained token: 6 x parameters (forward 2, backward 4), as the usual MFU
# definition; mfu_attention counts only matmul weights (not the input embedding, a lookup) and
# adds attention's 12 x layers x hidden x seq.
flops_per_token = 6 * params
flops_attention = 6 * (params - config["vocab_size"] * config["hidden_size"]) \
    + 12 * config["num_layers"] * config["hidden_size"] * seq
train = {}
for dtype in ("bf16", "f32"):
    t = load("train-" + dtype)
    achieved = t["tokens_per_s"] * flops_per_token
    train[dtype] = {
        "median_ms_per_step": t["median_ms"],
        "tokens_per_step": t["tokens_per_step"],
        "tokens_per_s": t["tokens_per_s"],
        "achieved_flops": achieved,
        "mfu": achieved / peak,
        "mfu_attention": t["tokens_per_s"] * flops_attention / peak,
    }

summary = {
    "check": "scripts/gpu-check.sh",
    "gpu": {"name": os.environ["GPU_NAME"], "memory": os.environ["GPU_MEMORY"],
            "driver": os.environ["GPU_DRIVER"], "peak_bf16_dense_flops": peak,
            "peak_source": os.environ["PEAK_SOURCE"]},
    "model": {**config, "parameters": params},
    "logits": logits,
    "decode": decode,
    "train": train,
    "pass": all(v["pass"] for k, v in logits.items() if isinstance(v, dict)),
}
print(json.dumps(summary, indent=2))
def verdict(x):
    return "pass" if x["pass"] else "FAIL"
print(
    f"GPU check on {os.environ['GPU_NAME']}, NeuroLLM {params:,} parameters: "
    f"logits vs CPU f32: f32 max|d| {logits['cuda_f32']['max_abs_diff']:.2e} top-1 {logits['cuda_f32']['top1_agreement']:.2f} {verdict(logits['cuda_f32'])}, "
    f"two shards {verdict(logits['cuda_f32_two_shards'])}, "
    f"bf16 max|d| {logits['cuda_bf16']['max_abs_diff']:.2e} top-1 {logits['cuda_bf16']['top1_agreement']:.2f} {verdict(logits['cuda_bf16'])}; "
    f"decode {decode['bf16']['decode_tokens_per_s']:.1f} tok/s bf16, {decode['f32']['decode_tokens_per_s']:.1f} f32; "
    f"training {train['bf16']['tokens_per_s']:,.0f} tok/s bf16 (MFU {100 * train['bf16']['mfu']:.1f}%), "
    f"{train['f32']['tokens_per_s']:,.0f} tok/s f32 (MFU {100 * train['f32']['mfu']:.1f}%) "
    f"-> {'PASS' if summary['pass'] else 'FAIL'}"
)
PY
)"
json="$(printf '%s\n' "$summary" | sed '$d')"
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  printf '%s\n' "$json" >"$OUT/gpu-check.json"
fi
printf '%s\n' "$summary"
if ! printf '%s\n' "$json" | "$python" -c 'import json, sys; sys.exit(0 if json.load(sys.stdin)["pass"] else 1)'; then
  echo "gpu-check: a logits comparison failed (see \"pass\" above)" >&2
  exit 1
fi
