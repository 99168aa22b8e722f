#!/usr/bin/env bash
# Creates .venv with the pinned dependencies; skipped when the pins did not change.
# Usage: scripts/bootstrap.sh [runtime|dev]
#   runtime  what `make serve` needs (requirements.txt)
#   dev      everything the tests, load tests and benchmarks need (requirements-dev.txt, which
#            includes the optional Spark and edge extras); a dev venv also serves runtime
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-dev}"
case "$profile" in
    runtime) requirements=(requirements.txt) ;;
    dev) requirements=(requirements-dev.txt) ;;
    *) echo "usage: $0 [runtime|dev]" >&2; exit 2 ;;
esac

PYTHON="$(bash scripts/python311.sh)"

inputs=(requirements*.txt pyproject.toml)
[[ -f constraints.txt ]] && inputs+=(constraints.txt)
want="$(cat "${inputs[@]}" | sha256sum | cut -d' ' -f1)"
for have in "$profile" dev; do
    if [[ -f ".venv/.stamp-$have" && "$(cat ".venv/.stamp-$have")" == "$want" ]]; then
        exit 0
    fi
done

[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --upgrade pip==25.3
constraints=()
[[ -f constraints.txt ]] && constraints=(-c constraints.txt)
"${pip[@]}" "${constraints[@]}" $(printf -- '-r %s ' "${requirements[@]}")
"${pip[@]}" --no-deps --no-build-isolation -e . 2>/dev/null || "${pip[@]}" --no-deps -e .
echo "$want" > ".venv/.stamp-$profile"
