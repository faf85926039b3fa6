#!/usr/bin/env bash
# Create .venv in the repository root and install the package with its test dependencies.
# Re-runs are cheap: nothing is reinstalled unless pyproject.toml changed since the last install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "bootstrap: need Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
  exit 2
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$stamp" ] && [ -x .venv/bin/pretrain ]; then
  exit 0
fi
echo "bootstrap: installing into $root/.venv (first time: about 5 minutes)" >&2
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip setuptools wheel
.venv/bin/python -m pip install --quiet -e '.[test]'
rm -f .venv/.installed-*
touch "$stamp"
