#!/usr/bin/env bash
# Look at the quickstart's results in the real MLflow UI with headless Chromium and save
# screenshots under docs/images/ (not part of the CI test command).
#
#   bash scripts/ui_check.sh [STORE_DIR]     # STORE_DIR: where mlflow.db is (default: repo root)
#
# Needs: the quickstart run in STORE_DIR (bash scripts/quickstart.sh) and Chromium from the
# distribution's packages (Debian/Ubuntu: apt-get install -y chromium). It starts `mlflow ui` on a
# free loopback port in its own process group, opens the experiment, the run page, the artifact
# view of the invariance profile and the registered model version (with its card), and on exit
# stops every process it started, by process id: the UI and its worker processes (killing only
# the UI's parent would leave its workers behind).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
store="$(cd "${1:-$root}" && pwd)"
out="$root/docs/images"
python="$root/.venv/bin/python"
db="$store/mlflow.db"

fail() { echo "ui_check: $*" >&2; exit 2; }
[ -x "$python" ] || fail "no .venv: run bash scripts/bootstrap.sh first"
[ -f "$db" ] || fail "no MLflow store at $db: run bash scripts/quickstart.sh first"
browser="$(command -v chromium || command -v chromium-browser || true)"
[ -n "$browser" ] || fail "no chromium: install it with 'apt-get install -y chromium'"
mkdir -p "$out"

# What to open: the newest quickstart run, its experiment and the version it registered.
read -r experiment run_id model version < <("$python" - "$db" <<'EOF'
import sys
from mlflow.tracking import MlflowClient

uri = f"sqlite:///{sys.argv[1]}"
client = MlflowClient(uri)
experiments = [e.experiment_id for e in client.search_experiments()]
runs = client.search_runs(experiments, "tags.`pretrain.run_name` = 'quickstart'",
                          order_by=["attributes.start_time DESC"], max_results=1)
if not runs:
    sys.exit("ui_check: no quickstart run in the store")
run = runs[0]
name, _, version = run.data.tags.get("pretrain.model_version", "none/0").rpartition("/")
print(run.info.experiment_id, run.info.run_id, name, version)
EOF
)

port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
log="$(mktemp -t ui_check.XXXXXX.log)"
profile="$(mktemp -d -t ui_check-chromium.XXXXXX)"
ui_pid=""

group_members() {  # live pids whose process group is $1 (zombies are only waiting to be reaped)
  ps -e -o pid=,pgid=,stat= | awk -v g="$1" '$2 == g && $3 !~ /^Z/ { printf "%s ", $1 }'
}

wait_group_empty() {  # wait_group_empty PGID SECONDS
  local i
  for i in $(seq 1 $(($2 * 2))); do
    [ -z "$(group_members "$1")" ] && return 0
    sleep 0.5
  done
  return 1
}

stop_ui() {
  [ -n "$ui_pid" ] || return 0
  # setsid made the UI the leader of its own process group: its workers are in that group.
  local members
  members="$(group_members "$ui_pid")"
  echo "ui_check: stopping the UI's process group $ui_pid: $(echo $members | wc -w) processes" >&2
  for pid in $members; do kill -TERM "$pid" 2>/dev/null || true; done
  if ! wait_group_empty "$ui_pid" 30; then
    for pid in $(group_members "$ui_pid"); do kill -KILL "$pid" 2>/dev/null || true; done
    wait_group_empty "$ui_pid" 10 || true
  fi
  left="$(group_members "$ui_pid")"
  if [ -n "${left// /}" ]; then
    echo "ui_check: processes left in group $ui_pid: $left" >&2
  else
    echo "ui_check: all stopped" >&2
  fi
  ui_pid=""
}
cleanup() { stop_ui; rm -rf "$profile"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "ui_check: mlflow ui on http://127.0.0.1:$port (store $store, log $log)" >&2
setsid "$root/.venv/bin/mlflow" ui --backend-store-uri "sqlite:///$db" \
  --default-artifact-root "file://$store/mlartifacts" --host 127.0.0.1 --port "$port" --workers 2 \
  >"$log" 2>&1 &
ui_pid=$!
sleep 1
[ "$(ps -o pgid= -p "$ui_pid" | tr -d ' ')" = "$ui_pid" ] || fail "mlflow ui is not its own process group"
for _ in $(seq 1 120); do
  curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  kill -0 "$ui_pid" 2>/dev/null || { cat "$log" >&2; fail "mlflow ui exited"; }
  sleep 1
done
curl -fs "http://127.0.0.1:$port/health" >/dev/null || fail "mlflow ui did not answer in 120 s"

# MLflow 3.17's UI takes its GenAI / Model training view from this query parameter (else from
# a per-browser setting that defaults to GenAI), not from the experiment's kind tag.
view="workflowType=machine_learning"

shoot() {  # shoot NAME ROUTE [WIDTH,HEIGHT]
  local file="$out/$1.png" size="${3:-1440,1000}"
  # Chromium runs in the foreground and exits by itself; virtual time lets the UI fetch and draw.
  timeout 120 "$browser" --headless=new --no-sandbox --disable-gpu --hide-scrollbars \
    --user-data-dir="$profile" --window-size="$size" --virtual-time-budget=20000 \
    --screenshot="$file" "http://127.0.0.1:$port/#$2?$view" >/dev/null 2>&1 \
    || fail "chromium could not capture $2"
  echo "ui_check: $file" >&2
}

shoot ui_experiment "/experiments/$experiment"
shoot ui_run "/experiments/$experiment/runs/$run_id"
shoot ui_run_profile "/experiments/$experiment/runs/$run_id/artifactPath/probes/invariance_profile.png"
if [ "$model" != "none" ]; then
  shoot ui_model_version "/models/$model/versions/$version" "1440,1800"
fi
stop_ui
echo "ui_check: done; look at the screenshots in $out" >&2
