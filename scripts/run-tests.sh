#!/usr/bin/env bash
# The test command: lint, then the whole test suite, in its own virtual environment (.venv-test).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${GENERATECT_TEST_VENV:-.venv-test}

# Orthanc + its DICOMweb plugin (Debian packages) for the PACS tests (Testing/test_pacs.py). Best effort:
# without root or apt-get the install is skipped and those tests skip with a message saying so.
install_orthanc() {
    if [ -x /usr/sbin/Orthanc ] && [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then
        return 0
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
            echo "run-tests: not root, cannot install orthanc orthanc-dicomweb; PACS tests will skip" >&2
            return 0
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "run-tests: no apt-get, cannot install orthanc orthanc-dicomweb; PACS tests will skip" >&2
        return 0
    fi
    echo "run-tests: installing orthanc orthanc-dicomweb with apt-get" >&2
    { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
        --no-install-recommends orthanc orthanc-dicomweb >/dev/null; } ||
        echo "run-tests: apt-get install orthanc orthanc-dicomweb failed; PACS tests will skip" >&2
}
install_orthanc || true

scripts/setup-venv.sh "$venv" dev
"$venv/bin/ruff" check .
"$venv/bin/python" -m pytest "$@"
