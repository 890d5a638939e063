#!/usr/bin/env bash
# Run the test suite: creates or reuses .venv, installs filecluster with its test extras, runs pytest.
# Extra arguments go to pytest (e.g. ./run_tests.sh -k upload -x).
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=scripts/venv.sh
. scripts/venv.sh
ensure_venv "[test]"
exec .venv/bin/python -m pytest "$@"
