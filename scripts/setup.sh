#!/usr/bin/env bash
# Create .venv and install wsipipe with its dev tools, once (again when pyproject.toml changes).
# Sourced by scripts/quickstart.sh and scripts/test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${WSIPIPE_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
stamp="$VENV/.wsipipe-installed"
if [ ! -x "$VENV/bin/python" ] || [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  echo "[setup] creating $VENV and installing wsipipe (first run downloads torch: a few minutes)" >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e "$ROOT[dev,workflow]"
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
