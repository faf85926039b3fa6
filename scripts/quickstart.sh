#!/usr/bin/env bash
# The quickstart: synthetic 3D data, embedded Ray, VICReg on the CPU, MLflow, registered encoder.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
exec .venv/bin/pretrain run configs/quickstart.yaml "$@"
