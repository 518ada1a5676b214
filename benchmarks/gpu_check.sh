#!/usr/bin/env bash
# The whole GPU proof of issue 15, in one go, on one CUDA GPU, in at most 8 minutes.
#
#   cd <repo root> && bash benchmarks/gpu_check.sh             # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run                     # the same script on CPU, < 1 min
#
# Uses the machine's own python3 (or $PYTHON) with PYTHONPATH=. and installs nothing: torch,
# torchvision, numpy, matplotlib, tensorboard, and pytest + pillow for the CUDA tests. Peers
# (captum, torchlens, wandb) are measured only if already installed.
#
# Steps, each under its own time limit, the whole under a hard one (GPU_CHECK_LIMIT_S, 470 s):
#   1. pytest -m cuda tests/test_cuda.py            -> gpu_cuda_tests.txt, gpu_cuda_report.json
#   2. benchmarks.bench_capture, resnet50 224 at batch 1 and 32: hook, chain, peers, peak
#      memory, end to end                           -> gpu_featureviz.json / .md
#   3. benchmarks.bench_monitor_peers, resnet50 224 batch 32 with bf16 autocast, every=100,
#      unsampled and capturing steps, the background writer beside training (real use), with
#      every installed peer                         -> gpu_monitor.json / .md
#   4. benchmarks.bench_monitor_throughput: the same with the writer charged to the capturing
#      step (an upper bound), no peers, no soak     -> gpu_monitor_charged.json / .md
#   5. benchmarks.gpu_summary: issue 15's targets next to the measured values, PASS / MISS
#                                                   -> gpu_check.md / .json
# Each step writes its figures as they come, and the summary runs even after the hard limit, so
# a stopped run still leaves a table. Results go to benchmarks/results/ (a dry run: a temporary
# folder, or $GPU_CHECK_RESULTS), and are copied to $OUT when it is set.
set -u
cd "$(dirname "$0")/.."
DRY=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $arg (use --dry-run)" >&2; exit 2 ;;
    esac
done
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export MPLBACKEND=Agg
PY="${PYTHON:-python3}"

if [ "$DRY" = 1 ]; then
    RESULTS="${GPU_CHECK_RESULTS:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-dry.XXXXXX")}"
    LIMIT="${GPU_CHECK_LIMIT_S:-150}"
else
    RESULTS="${GPU_CHECK_RESULTS:-benchmarks/results}"
    LIMIT="${GPU_CHECK_LIMIT_S:-470}"
fi
mkdir -p "$RESULTS"

# The hard limit: run the steps in a child under `timeout`, then summarize whatever they left.
if [ -z "${_GPU_CHECK_STEPS:-}" ]; then
    start=$(date +%s)
    _GPU_CHECK_STEPS=1 GPU_CHECK_RESULTS="$RESULTS" \
        timeout --signal=TERM --kill-after=10 "$LIMIT" bash "$0" "$@"
    rc=$?
    [ "$rc" = 124 ] && echo "== stopped by the hard limit of ${LIMIT} s: the figures so far follow"
    echo "== summary ($(( $(date +%s) - start )) s so far)"
    if [ -f "$RESULTS/gpu_featureviz.json" ]; then  # the tables of a stopped run too
        "$PY" -m benchmarks.bench_capture --from-json "$RESULTS/gpu_featureviz.json" \
            --markdown "$RESULTS/gpu_featureviz.md" >/dev/null || true
    fi
    summary_args=("$RESULTS")
    [ "$DRY" = 1 ] && summary_args+=(--dry-run)
    "$PY" -m benchmarks.gpu_summary "${summary_args[@]}" || rc=$?
    if [ -n "${OUT:-}" ]; then
        mkdir -p "$OUT"
        cp -f "$RESULTS"/gpu_* "$OUT"/ 2>/dev/null || true
        echo "== copied to $OUT"
    fi
    echo "== results in $RESULTS (exit code $rc)"
    exit "$rc"
fi

# -- the steps (in the child) -----------------------------------------------------------------
step() {  # step NAME SECONDS COMMAND...: run one step under its own limit, never stop the rest
    local name=$1 limit=$2
    shift 2
    local t0=$(date +%s)
    echo "== $name (limit ${limit} s)"
    timeout --signal=TERM --kill-after=5 "$limit" "$@"
    local rc=$?
    echo "== $name: exit code $rc after $(( $(date +%s) - t0 )) s"
    return 0
}

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$PY" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision",
torchvision.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
if [ "$DRY" = 0 ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "CUDA is not available: nothing to measure (use --dry-run to check the script)." >&2
    exit 2
fi

if "$PY" -c 'import pytest' 2>/dev/null; then
    rm -f "$RESULTS/gpu_cuda_report.json"
    step "CUDA tests" "$([ "$DRY" = 1 ] && echo "$LIMIT" || echo 120)" \
        env FEATUREVIZ_CUDA_REPORT="$RESULTS/gpu_cuda_report.json" \
        "$PY" -m pytest -m cuda tests/test_cuda.py -q -rs -p no:cacheprovider -o addopts="" \
        2>&1 | tee "$RESULTS/gpu_cuda_tests.txt"
else
    echo "pytest is not installed: the CUDA tests are not run" | tee "$RESULTS/gpu_cuda_tests.txt"
fi

if [ "$DRY" = 1 ]; then
    FV=(--quick --device cpu --models resnet18 --sizes 32 --batches 1 2 --no-end-to-end)
    MON=(--device cpu --model tiny --size 16 --batch 2 --classes 4 --amp bf16 --rounds 1
         --capture-samples 2)
    # A dry run checks that the script works, not how fast: only the hard limit bounds its
    # steps, so a loaded machine slows it down without failing it.
    FV_S=$LIMIT; MON_S=$LIMIT; MON2_S=$LIMIT
else
    FV=(--device cuda --models resnet50 --sizes 224 --batches 1 32)
    MON=(--device cuda --model resnet50 --size 224 --batch 32 --classes 1000 --amp bf16
         --rounds 3 --capture-samples 6)
    FV_S=140; MON_S=130; MON2_S=60
fi

step "bench_capture" "$FV_S" "$PY" -m benchmarks.bench_capture "${FV[@]}" \
    --json "$RESULTS/gpu_featureviz.json" --markdown "$RESULTS/gpu_featureviz.md"
step "bench_monitor_peers (writer beside training)" "$MON_S" \
    "$PY" -m benchmarks.bench_monitor_peers "${MON[@]}" --writer overlap --peers auto \
    --json "$RESULTS/gpu_monitor.json" --markdown "$RESULTS/gpu_monitor.md"
step "bench_monitor_throughput (writer charged to the capturing step)" "$MON2_S" \
    "$PY" -m benchmarks.bench_monitor_throughput "${MON[@]}" --writer charged --rounds 1 \
    --no-soak --json "$RESULTS/gpu_monitor_charged.json" \
    --markdown "$RESULTS/gpu_monitor_charged.md"
exit 0
