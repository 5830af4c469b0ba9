#!/usr/bin/env bash
# GPU check (docs/benchmarks.md, "GPU check"): on a machine with one CUDA GPU and no internet, in under 8 minutes,
#   1. bench: the per-step benchmark (python -m subspace_tuning.bench) of frozen / full / LoRA / DoRA / AdaLoRA /
#      (IA)3 and their Hugging Face PEFT twins at roberta-base dims (random weights, nothing downloaded), bfloat16
#      (float32 where the GPU has no bf16; the record says so), batch 32, length 128;
#   2. train: one MiniLM run, python train.py experiment=quickstart train.mixed_precision=auto (offline model,
#      built-in toy task);
# and writes ONE JSON record: the machine (torch, CUDA, GPU, bf16 support), each part's exit status, wall time and
# time limit, the benchmark's result and the run's headline score, steps/s and peak memory.
#
#   bash scripts/gpu_check.sh [OUT_DIR]     # OUT_DIR/gpu_check.json; default $OUT, else the current folder
#
# Exit status: 0 every part ran and passed; 1 a part failed, hit its time limit or had no time left (the record
# says which, with its log's last lines; the script always goes on to the next part); 2 a usage error;
# 3 nothing ran: no CUDA GPU (or torch could not be probed). A check that did not run is not a pass, hence not 0;
# the record then holds "ran": false and why.
# Each part runs under timeout(1), and every limit is cut to what is left of GPU_CHECK_TOTAL_S (default 450 s),
# so the whole stays under 8 minutes even if a part hangs. GPU_CHECK_FORCE_CPU=1 runs both parts on the CPU at
# tiny sizes (the tests' way through the whole script; not GPU numbers). PYTHON picks the interpreter.
set -euo pipefail

if (($# > 1)); then
    echo "usage: bash scripts/gpu_check.sh [OUT_DIR]" >&2
    exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
OUT_DIR="${1:-${OUT:-.}}"
mkdir -p "$OUT_DIR"
RESULT="$(cd "$OUT_DIR" && pwd)/gpu_check.json"
TOTAL_S="${GPU_CHECK_TOTAL_S:-450}"
PROBE_S="${GPU_CHECK_PROBE_S:-60}"
BENCH_S="${GPU_CHECK_BENCH_S:-240}"
TRAIN_S="${GPU_CHECK_TRAIN_S:-150}"
KILL_AFTER_S=10 # a part that ignores TERM is killed this long after its limit
RESERVE_S=30    # kept back from every part's limit: KILL_AFTER_S and writing the record
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT"

say() { echo "gpu_check: $*" >&2; }
now() { date +%s.%N; }

# run_part NAME BUDGET_S COMMAND...: COMMAND under timeout, its output in WORK/NAME.log and
# "<exit status | skipped> <wall s> <limit s>" in WORK/NAME.status; never stops the script.
run_part() {
    local name=$1 limit=$2 rc=0 start
    shift 2
    local left=$((TOTAL_S - SECONDS - RESERVE_S))
    ((limit <= left)) || limit=$left
    if ((limit < 1)); then
        echo "skipped 0 0" >"$WORK/$name.status"
        say "$name: skipped, no time left within GPU_CHECK_TOTAL_S=$TOTAL_S"
        return 0
    fi
    say "$name: $* (limit ${limit} s)"
    start=$(now)
    timeout --kill-after="$KILL_AFTER_S" "$limit" "$@" >"$WORK/$name.log" 2>&1 || rc=$?
    local wall
    wall=$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
    echo "$rc $wall $limit" >"$WORK/$name.status"
    say "$name: exit status $rc after $wall s"
}

assemble() { # assemble [--why REASON]: the record; returns gpu_check.py's verdict (0 / 1 / 3)
    local code=0
    "$PYTHON" scripts/gpu_check.py assemble --work "$WORK" --out "$RESULT" "$@" 2>>"$WORK/assemble.log" || code=$?
    if [[ ! -s "$RESULT" ]]; then
        say "could not write $RESULT: $(tail -n 1 "$WORK/assemble.log")"
        return 1
    fi
    return "$code"
}

# --- the machine ---------------------------------------------------------------------------------------
probe_rc=0
verdict=$(timeout --kill-after="$KILL_AFTER_S" "$PROBE_S" "$PYTHON" scripts/gpu_check.py probe --work "$WORK" \
    2>"$WORK/probe.log") || probe_rc=$?
read -r mode bf16 <<<"${verdict:-none 0}"
printf 'mode %s\ntotal_limit_s %s\nstarted %s\n' "$mode" "$TOTAL_S" "$(date -u +%FT%TZ)" >"$WORK/settings.txt"
if ((probe_rc != 0)); then
    why="torch could not be probed (exit status $probe_rc: $(tail -n 1 "$WORK/probe.log")); nothing run"
    say "$why"
    code=0
    assemble --why "$why" || code=$?
    exit "$code"
fi
if [[ $mode == no-cuda ]]; then
    why="no CUDA GPU (torch.cuda.is_available() is False); nothing run"
    say "$why"
    code=0
    assemble --why "$why" || code=$?
    exit "$code"
fi

# --- the parts -----------------------------------------------------------------------------------------
bench=("$PYTHON" -m subspace_tuning.bench --methods "lora,dora,adalora,ia3" --json "$WORK/bench.json")
train=("$PYTHON" train.py experiment=quickstart train.mixed_precision=auto "output_root=$WORK/train_out"
    "data.cache_dir=$WORK/cache" train.progress=false)
if [[ $mode == cuda ]]; then
    bench+=(--device cuda --model roberta-base --batch 32 --seq-len 128 --repeats 15 --warmup 3)
    if [[ $bf16 == 1 ]]; then
        dtype=bfloat16 dtype_why=""
    else
        dtype=float32 dtype_why="this GPU has no bf16 (torch.cuda.is_bf16_supported() is False): ran in float32"
    fi
else # forced-cpu: tiny sizes, so that the tests can take the whole path in seconds
    bench+=(--device cpu --quick --repeats 1 --warmup 0 --no-eval)
    train+=(model=tiny-roberta train.max_steps=2 data.max_train_samples=64 data.max_eval_samples=64)
    dtype=float32 dtype_why="GPU_CHECK_FORCE_CPU=1: tiny float32 run on the CPU"
fi
bench+=(--dtype "$dtype")
{
    echo "bench_dtype $dtype"
    echo "bench_why $dtype_why"
    echo "bench_command ${bench[*]}"
    echo "train_command ${train[*]}"
} >>"$WORK/settings.txt"

run_part bench "$BENCH_S" "${bench[@]}"
run_part train "$TRAIN_S" "${train[@]}"

code=0
assemble || code=$?
say "wrote $RESULT ($([[ $code == 0 ]] && echo "every part ok" || echo "exit status $code: see the parts' status"))"
exit "$code"
