#!/usr/bin/env bash
# The quickstart: synthetic 3D data, embedded Ray, VICReg on the CPU, MLflow, registered encoder.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# The first install takes minutes of quiet pip work: report its progress (packages installed so
# far, time elapsed) every 15 s until it ends.
bash "$root/scripts/bootstrap.sh" &
install_pid=$!
started=$SECONDS
next_report=15
while kill -0 "$install_pid" 2>/dev/null; do
  sleep 1
  elapsed=$((SECONDS - started))
  if [ "$elapsed" -ge "$next_report" ]; then
    count=$(find .venv/lib -maxdepth 3 -name '*.dist-info' -type d 2>/dev/null | wc -l)
    echo "quickstart: installing: ${count} packages in .venv after ${elapsed}s" \
         "(usually about 5 min in all)" >&2
    next_report=$((next_report + 15))
  fi
done
wait "$install_pid"
[ "$((SECONDS - started))" -ge 15 ] && echo "quickstart: installed in $((SECONDS - started))s" >&2

exec .venv/bin/pretrain run configs/quickstart.yaml "$@"
