#!/usr/bin/env bash
# The speed bench on one CUDA GPU, in "32-true" and "bf16-mixed", plus the CUDA-only tests; < 10 minutes.
# UNTESTED ON A GPU: written and checked on CPU-only machines (the CUDA paths are covered by tests marked `cuda`,
# skipped there). Needs an environment with csfl_fabric's dependencies and a CUDA build of torch; no network.
#
#   bash bench/gpu.sh                 # PYTHON=/path/to/python, REPS=2 (default) to change
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
REPS=${REPS:-2}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=disabled

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu.sh: no CUDA device visible to $PYTHON (torch.cuda.is_available() is False); nothing to run." >&2
    exit 1
fi
"$PYTHON" -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__, \
'| bf16:', torch.cuda.is_bf16_supported())"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv

status=0
echo "== CUDA tests"
timeout 120 "$PYTHON" -m pytest -q -m cuda tests || status=1
for precision in 32-true bf16-mixed; do
    echo "== speed bench, precision=$precision"
    # Each contender runs in its own process; the timeout keeps the whole script under 10 minutes.
    timeout 220 "$PYTHON" bench/speed.py --device cuda --precision "$precision" --reps "$REPS" || status=1
done
exit $status
