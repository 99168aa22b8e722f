#!/usr/bin/env bash
# The whole default test suite, as CI runs it: lint, then unit + integration tests (not slow).
# Extra arguments go to pytest, e.g. scripts/test.sh -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh dev
bash scripts/system-deps.sh redis java web node
bash scripts/web-deps.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
if [[ $# -eq 0 ]]; then
    set -- -m "not slow"
fi
exec .venv/bin/python -m pytest "$@"
