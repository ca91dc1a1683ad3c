#!/usr/bin/env bash
# Run the Python test suite (sets up the environment first). Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NEXUSQUANT_VENV:-$ROOT/.venv}"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}"
set +e
"$VENV/bin/python" -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    # pytest's "no tests collected": fine for a filtered run (e.g. `-m gpu` on a machine whose
    # selection is empty), a broken suite layout when the whole suite was asked for.
    if [ "$#" -gt 0 ]; then
        echo "[test] no tests selected by: $*"
        exit 0
    fi
    echo "[test] pytest collected no tests at all: the suite is broken"
    exit 1
fi
exit "$rc"
