#!/usr/bin/env bash
# The venv of the MLServer peer of `make bench` (build/venv-mlserver), from the exact pins of
# benchmarks/mlserver/requirements.txt; skipped when the pins did not change. It holds MLServer and
# the model libraries only, never this project (the runtime reads the model store directly).
# Under build/ because ruff and git already ignore that folder.
# Usage: scripts/mlserver.sh [venv|path]   (path: print the venv's directory)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MLSERVER_VENV:-build/venv-mlserver}"
REQUIREMENTS=benchmarks/mlserver/requirements.txt

case "${1:-venv}" in
    path) echo "$VENV"; exit 0 ;;
    venv) ;;
    *) echo "usage: $0 [venv|path]" >&2; exit 2 ;;
esac

PYTHON="$(bash scripts/python311.sh)"

want="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
if [[ -f "$VENV/.stamp" && "$(cat "$VENV/.stamp")" == "$want" ]]; then
    exit 0
fi
echo "setting up the MLServer venv in $VENV"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --upgrade pip==25.3
"${pip[@]}" -r "$REQUIREMENTS"
"$VENV/bin/python" -m pip check --disable-pip-version-check
echo "$want" > "$VENV/.stamp"
