#!/usr/bin/env bash
# Prints the Python 3.11 interpreter to build a venv with ($PYTHON, else python3.11, else python3), installing
# python3-venv when that interpreter lacks venv/ensurepip. Exit 1 when there is no Python 3.11.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if ! "$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
    echo "Python 3.11 is required (found: $("$PYTHON" --version 2>&1))" >&2
    exit 1
fi
if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
    bash scripts/system-deps.sh venv >&2
fi
echo "$PYTHON"
