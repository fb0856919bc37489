#!/usr/bin/env bash
# The main job, in its own virtual environment (.venv): the three GenerateCT stage networks at the
# released sizes on this machine (random weights), timed against the reference's measured CPU costs.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${GENERATECT_VENV:-.venv}
scripts/setup-venv.sh "$venv" dev
"$venv/bin/generatect" info
"$venv/bin/python" benchmarks/stage_speed.py "$@"
