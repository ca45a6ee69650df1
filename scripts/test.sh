#!/usr/bin/env bash
# Run the default test suite (slow and GPU tests are skipped; add `-m slow` to run those).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec python -m pytest "$@"
