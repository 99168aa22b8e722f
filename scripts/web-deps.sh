#!/usr/bin/env bash
# Installs the npm packages of package.json (onnxruntime-web for `fraud-edge export --web`) into node_modules/,
# only when the installed version differs. Exact versions, no lock file (.npmrc: package-lock=false).
set -euo pipefail
cd "$(dirname "$0")/.."
want="$(node -p "require('./package.json').dependencies['onnxruntime-web']")"
have="$(node -p "require('./node_modules/onnxruntime-web/package.json').version" 2>/dev/null || true)"
[[ "$want" == "$have" ]] && exit 0
echo "installing onnxruntime-web $want (npm)"
# No install scripts: only the files of dist/ are used, and a postinstall would run code at install time.
npm install --no-package-lock --no-audit --no-fund --ignore-scripts --loglevel=error
