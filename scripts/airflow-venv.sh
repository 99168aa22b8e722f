#!/usr/bin/env bash
# Airflow's own venv, for the nightly DAG in deploy/airflow (never the project's .venv: Airflow pins its own
# SQLAlchemy, FastAPI, pydantic... and its install is big). Pinned by deploy/airflow/requirements.txt; skipped
# when the pins did not change (stamp, as scripts/bootstrap.sh). Prints the venv's path.
#   AIRFLOW_VENV=build/airflow-venv   where it goes
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AIRFLOW_VENV:-$ROOT/build/airflow-venv}"
REQUIREMENTS="$ROOT/deploy/airflow/requirements.txt"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3

want="$(cat "$REQUIREMENTS" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [[ -f "$VENV/.stamp" && "$(cat "$VENV/.stamp")" == "$want" && -x "$VENV/bin/airflow" ]]; then
    echo "$VENV"
    exit 0
fi
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || bash "$ROOT/scripts/system-deps.sh" venv >&2
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" pip==25.3 >&2
# The full pin set with --no-deps: nothing is resolved anew, so the venv is the same everywhere.
"${pip[@]}" --no-deps -r "$REQUIREMENTS" >&2
"$VENV/bin/python" -m pip check --disable-pip-version-check >&2
echo "$want" >"$VENV/.stamp"
echo "$VENV"
