# Sourced by run_cluster.sh and run_tests.sh: make sure .venv exists and holds the package.
# Usage: ensure_venv EXTRAS   (EXTRAS is "" or "[test]")
# Every install is pinned by constraints.txt; editing it (or pyproject.toml) triggers a reinstall.
_venv_fresh() {  # root stamp: was the install the stamp marks made after the last edit of the pins?
  [ -f "$2" ] && [ ! "$1/pyproject.toml" -nt "$2" ] && [ ! "$1/constraints.txt" -nt "$2" ]
}

ensure_venv() {
  local extras="$1" root stamp
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  stamp="$root/.venv/.installed$extras"
  if [ ! -x "$root/.venv/bin/python" ]; then
    local py=""
    for candidate in python3 python3.13 python3.12 python3.11 python3.10 python; do
      if command -v "$candidate" >/dev/null 2>&1 &&
         "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
        py="$candidate"; break
      fi
    done
    [ -n "$py" ] || { echo "error: filecluster needs Python 3.10 or newer" >&2; return 1; }
    echo "creating .venv with $py" >&2
    "$py" -m venv "$root/.venv" || { echo "error: could not create .venv (is python3-venv installed?)" >&2; return 1; }
  fi
  # the test install ([test]) holds everything the plain one does
  if ! _venv_fresh "$root" "$stamp" && { [ -n "$extras" ] || ! _venv_fresh "$root" "$stamp[test]"; }; then
    echo "installing filecluster$extras into .venv" >&2
    "$root/.venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      -c "$root/constraints.txt" -e "$root$extras" \
      || { echo "error: pip install failed" >&2; return 1; }
    touch "$stamp"
  fi
}
