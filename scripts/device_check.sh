#!/usr/bin/env bash
# One prepared run on a lent GPU machine (docs/results.md, "CUDA path"): the CUDA checks and
# `pretrain bench` (benchmarks/cuda_check.py), then, only if every check passed, the fidelity
# table (benchmarks/fidelity.py) with whatever time is left of BUDGET_S seconds.
#
#   OUT=out bash scripts/device_check.sh [BUDGET_S]
#
# The machine's own python3 (with torch, timm, numpy, scipy, scikit-learn) runs the code; the
# packages it lacks travel as wheels in .whl/ (an ignored folder, see docs/results.md) and are
# installed into /tmp/site. Reports and logs land in $OUT.
set -uo pipefail
budget=${1:-560}
out=${OUT:-device-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import sys, torch, kornia, deepspeed, timm, webdataset
print(sys.version.split()[0], 'torch', torch.__version__, 'kornia', kornia.__version__,
      'deepspeed', deepspeed.__version__, 'timm', timm.__version__)" 2>&1 | tee -a "$out/gpu.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1

timeout 240 python3 benchmarks/cuda_check.py --out "$out/cuda_check.md" 2>&1 \
    | grep -v "\[WARNING\]" | tee "$out/cuda_check.log"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
    echo "cuda_check failed (exit $rc): fidelity table skipped"
    exit "$rc"
fi

# The fidelity suite (3 seeds; synth3d and CIFAR-10 parts) has a step budget, not a time budget:
# FIDELITY_STEPS / FIDELITY_CIFAR_STEPS per run (not yet sized on a GPU; issue 10, item 7). The
# timeout keeps it inside BUDGET_S; a run cut short leaves its log in $OUT.
left=$((budget - SECONDS))
echo "== fidelity suite ($left s left of $budget)"
timeout $((left > 30 ? left - 10 : 20)) python3 benchmarks/fidelity.py \
    --steps "${FIDELITY_STEPS:-1000}" --cifar-steps "${FIDELITY_CIFAR_STEPS:-500}" \
    --set data.num_workers=8 --out "$out/fidelity_gpu.md" 2>&1 \
    | grep -v "\[WARNING\]" | tee "$out/fidelity.log"
exit "${PIPESTATUS[0]}"
