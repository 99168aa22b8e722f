#!/usr/bin/env bash
# Installs the Debian packages a task needs, only when missing. Usage: system-deps.sh GROUP...
#   venv   python3-venv (only if the interpreter lacks venv/ensurepip)
#   redis  redis-server (streaming worker and its tests)
#   java   openjdk-17-jre-headless (Spark engine)
#   image  buildah podman runc skopeo mmdebstrap uidmap curl (OCI image without a Docker daemon)
#   web    chromium (headless tests of the edge bundle's browser page)
#   node   nodejs npm (onnxruntime-web from npm for that page: scripts/web-deps.sh); apart from web because
#          an npm that came with another nodejs build must not pull in Debian's
#   bench  wrk (HTTP load generator) and sysstat (pidstat) for benchmarks/online.py
set -euo pipefail

declare -A GROUPS_=(
    [venv]="python3-venv"
    [redis]="redis-server"
    [java]="openjdk-17-jre-headless"
    [image]="buildah podman runc skopeo mmdebstrap uidmap fuse-overlayfs curl"
    [web]="chromium"
    [node]="nodejs npm"
    [bench]="wrk sysstat"
)
declare -A PROBE=(
    [venv]="python3 -c 'import venv, ensurepip'"
    [redis]="command -v redis-server"
    [java]="command -v java"
    [image]="command -v buildah && command -v podman && command -v mmdebstrap && command -v curl"
    [web]="command -v chromium"
    [node]="command -v node && command -v npm"
    [bench]="command -v wrk && command -v pidstat"
)

missing=()
for group in "$@"; do
    [[ -n "${GROUPS_[$group]:-}" ]] || { echo "unknown group: $group" >&2; exit 2; }
    if ! bash -c "${PROBE[$group]}" >/dev/null 2>&1; then
        read -r -a pkgs <<<"${GROUPS_[$group]}"
        missing+=("${pkgs[@]}")
    fi
done
((${#missing[@]})) || exit 0

SUDO=""
[[ "$(id -u)" == 0 ]] || SUDO="sudo"
echo "installing system packages: ${missing[*]}"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
