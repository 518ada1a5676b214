#!/usr/bin/env bash
# One prepared GPU run of the benchmark, for a machine with CUDA and no network.
#
#   cd <repo root> && bash benchmarks/gpu_run.sh
#
# Uses the machine's own python3 and torch (torch >= 2.2, torchvision >= 0.17, numpy, matplotlib,
# tensorboard) with PYTHONPATH=. -- nothing is installed or downloaded. captum/torchlens are used
# only if already installed. Budget: about 8 minutes (a hard stop at BENCH_LIMIT_S, default 450 s);
# the JSON is written after every step, so a stopped run still leaves its figures and its table.
#
# Writes benchmarks/results/bench_cuda.json and benchmarks/results/bench_cuda.md, and copies both
# into "$OUT" when OUT is set.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export MPLBACKEND=Agg
PY="${PYTHON:-python3}"
LIMIT="${BENCH_LIMIT_S:-450}"
RESULTS=benchmarks/results
mkdir -p "$RESULTS"

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$PY" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision",
torchvision.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "CUDA is not available: nothing to run." >&2
    exit 2
fi

echo "== benchmark (limit ${LIMIT} s)"
start=$(date +%s)
timeout --signal=TERM --kill-after=10 "$LIMIT" \
    "$PY" benchmarks/bench_featureviz.py --device cuda --json "$RESULTS/bench_cuda.json" \
    --markdown "$RESULTS/bench_cuda.md"
rc=$?
echo "== benchmark exit code $rc after $(( $(date +%s) - start )) s"
if [ "$rc" -ne 0 ] && [ -f "$RESULTS/bench_cuda.json" ]; then
    echo "(stopped early: the table below is from the partial JSON)"
    "$PY" benchmarks/bench_featureviz.py --from-json "$RESULTS/bench_cuda.json" \
        --markdown "$RESULTS/bench_cuda.md"
fi

if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    cp -f "$RESULTS/bench_cuda.json" "$RESULTS/bench_cuda.md" "$OUT"/ 2>/dev/null || true
fi
exit "$rc"
