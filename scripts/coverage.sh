#!/usr/bin/env bash
# Line + branch coverage of common, proxy, servers and client over every process the tests start
# (pytest itself, the proxy and storage server subprocesses, the CLI clients).
# Usage: scripts/coverage.sh [pytest args]   e.g. scripts/coverage.sh -k upload -x
# Config: scripts/coveragerc. Data: .coverage-data/ (wiped at the start of each run; the combined
# file stays there, so e.g. `.venv/bin/python -m coverage html --rcfile=scripts/coveragerc` works after).
# Exit status: pytest's.
set -euo pipefail
cd "$(dirname "$0")/.."

py=.venv/bin/python
rc_file=scripts/coveragerc
data_dir=.coverage-data
[ -x "$py" ] || { echo "error: $py not found (run ./run_tests.sh once to create .venv)" >&2; exit 1; }

# Settings from the caller's environment would override or bypass scripts/coveragerc.
unset COVERAGE_FILE COVERAGE_RCFILE COVERAGE_PROCESS_START COVERAGE_PROCESS_CONFIG

# Every process of this run inherits this variable (tests/cluster.py copies os.environ into the
# daemons' environment), so anything still alive after pytest is ours to stop, found by that mark.
# It is passed to pytest only, not exported, so this shell and its helpers do not carry it.
run_id="$$-$RANDOM$RANDOM"
mark="FILECLUSTER_COVERAGE_RUN=$run_id"

ours() {  # pids of live processes that carry the mark (Linux /proc); this shell never does
  [ -d /proc/self ] || return 0
  grep -lsxzF -- "$mark" /proc/[0-9]*/environ 2>/dev/null | sed -n 's|^/proc/\([0-9]*\)/environ$|\1|p' || true
}

stop_leftovers() {
  local pids pid i
  pids="$(ours)"
  [ -n "$pids" ] || return 0
  echo "coverage.sh: stopping processes the tests left behind: ${pids//$'\n'/ }" >&2
  for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
  for i in $(seq 50); do  # up to 10 s for a clean exit (which also saves their coverage data)
    pids="$(ours)"
    [ -n "$pids" ] || return 0
    sleep 0.2
  done
  for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
}

trap stop_leftovers EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

rm -rf "$data_dir"
mkdir -p "$data_dir"

status=0
env "$mark" "$py" -m coverage run --rcfile="$rc_file" \
  -m pytest -q -p no:cacheprovider "$@" || status=$?

stop_leftovers

echo >&2
if ! "$py" -m coverage combine --rcfile="$rc_file" --quiet; then
  echo "coverage.sh: no coverage data was recorded" >&2
  exit $((status ? status : 1))
fi
"$py" -m coverage report --rcfile="$rc_file" -m --skip-covered
total="$("$py" -m coverage report --rcfile="$rc_file" --format=total)"
echo "TOTAL coverage (lines + branches; common, proxy, servers, client, all processes): ${total}%"
exit "$status"
