#!/usr/bin/env bash
# The main job, in its own virtual environment (.venv): a synthetic chest CT from an example prompt with the
# bundled demo model on the CPU -> outputs/demo_ct.nii.gz, .json provenance, _attention/ heatmaps, .png preview.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${GENERATECT_VENV:-.venv}
scripts/setup-venv.sh "$venv" dev
"$venv/bin/generatect" generate --model demo --age 65 --sex male \
    --impression "Cardiomegaly. Moderate left pleural effusion." --seed 1 --device cpu \
    --out outputs/demo_ct.nii.gz --preview outputs/demo_ct.png --attention --overwrite "$@"
