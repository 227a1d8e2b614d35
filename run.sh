#!/usr/bin/env bash
# bash run.sh demo   install what is needed and run the main examples on the bundled digits data:
#                    gradual magnitude pruning, then IVON + Bayesian model reduction
# bash run.sh test   install what is needed and run the test suite
set -euo pipefail
cd "$(dirname "$0")"
VENV="${BMR_EQX_VENV:-.venv}"

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install --quiet -e ".[$1]"
}

case "${1:-}" in
  demo)
    setup examples
    export MPLBACKEND=Agg
    "$VENV/bin/python" examples/train_digits.py
    "$VENV/bin/python" examples/bmr_digits.py
    ;;
  test)
    setup test
    "$VENV/bin/python" -m pytest -q "${@:2}"
    ;;
  *)
    echo "usage: bash run.sh demo|test [extra args]" >&2
    exit 2
    ;;
esac
