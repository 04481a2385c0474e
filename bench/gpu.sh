#!/usr/bin/env bash
# The GPU path, measured on one CUDA GPU in one prepared run of < 10 minutes:
#   1. the test suite's tests marked `cuda`;
#   2. bench/speed.py on CUDA (bare loop, sequential and cohort backends) in fabric.precision 32-true and bf16-mixed;
#   3. bench/gpu_checks.py: EmptyCudaCache releases reserved memory, RamGuard's emergency cleanup empties the CUDA
#      cache, and one round of 1,000 clients of the small CNN per backend in clients per second (both precisions).
# Needs an environment with csfl_fabric's dependencies and a CUDA build of torch; no network.
#
#   bash bench/gpu.sh            # on a GPU machine; PYTHON=/path/to/python, REPS=2 (speed bench repetitions)
#   bash bench/gpu.sh --cpu      # no GPU: the same steps, CUDA parts skipped, the rest on the CPU at minimal size
#   bash bench/gpu.sh --dry-run  # print the commands only
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
REPS=${REPS:-2}
MODE=${1:-gpu}
export PYTHONPATH="$PWD:$PWD/callbacks${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=disabled

status=0
step() {  # step SECONDS COMMAND...: run it under a timeout (or print it), remember a failure, go on
    local limit=$1; shift
    echo "+ $*"
    [[ $MODE == --dry-run ]] && return
    timeout "$limit" "$@" || { echo "gpu.sh: FAILED (rc $?): $*" >&2; status=1; }
}

case $MODE in
gpu|--dry-run)
    if [[ $MODE == gpu ]]; then
        if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
            echo "gpu.sh: no CUDA device visible to $PYTHON (torch.cuda.is_available() is False); try --cpu." >&2
            exit 1
        fi
        "$PYTHON" -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__, \
'| bf16:', torch.cuda.is_bf16_supported())"
        command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu \
            --format=csv
    fi
    echo "== 1. CUDA tests"
    step 120 "$PYTHON" -m pytest -q -m cuda tests callbacks/tests
    for precision in 32-true bf16-mixed; do
        echo "== 2. speed bench, precision=$precision"
        step 150 "$PYTHON" bench/speed.py --device cuda --precision "$precision" --reps "$REPS"
    done
    echo "== 3. memory policies on CUDA, and a 1,000-client round"
    step 80 "$PYTHON" bench/gpu_checks.py --device cuda --precision 32-true
    step 50 "$PYTHON" bench/gpu_checks.py --device cuda --precision bf16-mixed --only round
    ;;
--cpu)
    echo "== 1. CUDA tests (all skipped without a GPU: checks the marker selection)"
    step 150 "$PYTHON" -m pytest -q -m cuda tests callbacks/tests
    echo "== 2. speed bench on the CPU, one workload, one repetition (checks the script)"
    step 170 "$PYTHON" bench/speed.py --device cpu --workloads W --reps 1
    echo "== 3. gpu_checks on the CPU (the CUDA checks say skipped), a 100-client round"
    step 120 "$PYTHON" bench/gpu_checks.py --device cpu --clients 100
    ;;
*)
    echo "usage: bash bench/gpu.sh [--cpu | --dry-run]" >&2
    exit 2
    ;;
esac
exit $status
