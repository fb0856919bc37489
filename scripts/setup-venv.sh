#!/usr/bin/env bash
# Create (once) a virtual environment and install GenerateCTLib into it with CPU torch 2.13.0.
# Usage: scripts/setup-venv.sh VENV_DIR [EXTRAS]
set -euo pipefail
venv=${1:?usage: scripts/setup-venv.sh VENV_DIR [EXTRAS]}
extras=${2:-}
cd "$(dirname "$0")/.."
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
# torch first, pinned to the CPU wheel, so that nothing pulls a multi-GB CUDA build
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}"
