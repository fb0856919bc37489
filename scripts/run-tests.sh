#!/usr/bin/env bash
# The test command: lint, then the whole test suite, in its own virtual environment (.venv-test).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${GENERATECT_TEST_VENV:-.venv-test}
scripts/setup-venv.sh "$venv" dev
"$venv/bin/ruff" check .
"$venv/bin/python" -m pytest "$@"
