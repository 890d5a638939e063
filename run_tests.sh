#!/usr/bin/env bash
# The test command: creates or reuses .venv (pinned by constraints.txt), then runs, in order,
#   ruff check (lint), ruff format --check (formatting), mypy (strict types), pytest.
# The first failure stops the run. Extra arguments go to pytest (e.g. ./run_tests.sh -k upload -x).
# pytest runs the test files in FILECLUSTER_TEST_WORKERS parallel workers (default 4; most tests
# wait on real daemons rather than compute, so 4 fit 2 cores; 0 runs everything in this process).
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=scripts/venv.sh
. scripts/venv.sh
ensure_venv "[test]"
echo "== ruff check" >&2
.venv/bin/ruff check --quiet .
echo "== ruff format --check" >&2
.venv/bin/ruff format --check --quiet .
echo "== mypy (strict)" >&2
.venv/bin/mypy
echo "== pytest" >&2
workers="${FILECLUSTER_TEST_WORKERS:-4}"
case "$workers" in ''|*[!0-9]*) echo "error: FILECLUSTER_TEST_WORKERS must be a number" >&2; exit 2 ;; esac
if [ "$workers" -eq 0 ]; then exec .venv/bin/python -m pytest "$@"; fi
exec .venv/bin/python -m pytest -n "$workers" --dist loadfile "$@"
