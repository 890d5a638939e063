#!/usr/bin/env bash
# The test command: creates or reuses .venv (pinned by constraints.txt), then runs, in order,
#   ruff check (lint), ruff format --check (formatting), mypy (strict types), pytest.
# The first failure stops the run. Extra arguments go to pytest (e.g. ./run_tests.sh -k upload -x).
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
exec .venv/bin/python -m pytest "$@"
