#!/usr/bin/env bash
# The bundle as an OCI image, built and run without a Docker daemon (buildah + podman).
#
#   scripts/image.sh build   system deps, models (if missing), bento, local Python 3.11 base (cached), image, size
#   scripts/image.sh start   run the image detached (podman, --network host), wait for /readyz
#   scripts/image.sh stop    stop it cleanly (SIGTERM, then remove)
#   scripts/image.sh run     start, follow its logs, stop cleanly on Ctrl-C
#   scripts/image.sh build-batch   the batch image: the image above plus pyarrow and a `fraud-batch` command
#   scripts/image.sh size    print the image size in MB
#   scripts/image.sh env     print the CONTAINERS_* exports, to use podman/buildah by hand on the same storage
#
# All container storage and configuration live in $IMAGE_STATE_DIR (default build/containers, gitignored);
# /etc is never edited. Models come from $BENTOML_HOME (default ~/bentoml, as for `make serve`).
#
# Knobs (environment):
#   IMAGE_REF=localhost/fraud-detection:latest   image built / run
#   BATCH_IMAGE_REF=localhost/fraud-detection-batch:latest   image of build-batch (deploy/k8s CronJob)
#   IMAGE_MAX_MB=640                             `build` fails above this size
#   IMAGE_CONTAINER=fraud-detection              container name of start/stop/run
#   IMAGE_HOST=0.0.0.0  IMAGE_HTTP_PORT=3000  IMAGE_GRPC_PORT=8001   where the container listens
#   IMAGE_NETWORK=host                           any other value publishes the two ports instead (-p)
#   IMAGE_READY_TIMEOUT_S=120
#   FRAUD_* variables of the caller are passed into the container (settings of the bundle).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STATE="${IMAGE_STATE_DIR:-$ROOT/build/containers}"
IMAGE_REF="${IMAGE_REF:-localhost/fraud-detection:latest}"
BASE_IMAGE="$("$VENV/bin/python" -c 'from fraudserve.image import BASE_IMAGE; print(BASE_IMAGE)' 2>/dev/null ||
    echo localhost/fraud-python-base:3.11-bookworm-nopip)"
BATCH_IMAGE_REF="${BATCH_IMAGE_REF:-localhost/fraud-detection-batch:latest}"
IMAGE_MAX_MB="${IMAGE_MAX_MB:-640}"
CONTAINER="${IMAGE_CONTAINER:-fraud-detection}"
HOST="${IMAGE_HOST:-0.0.0.0}"
HTTP_PORT="${IMAGE_HTTP_PORT:-3000}"
GRPC_PORT="${IMAGE_GRPC_PORT:-8001}"
NETWORK="${IMAGE_NETWORK:-host}"
READY_TIMEOUT_S="${IMAGE_READY_TIMEOUT_S:-120}"
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
UV_VERSION=0.13.8

log() { printf '==> %s\n' "$*" >&2; }

write_container_config() {
    mkdir -p "$STATE"/{storage,run,tmp}
    # Measured on this VM (docs/architecture.md): crun fails on hybrid cgroups, systemd is not the cgroup manager here.
    cat >"$STATE/containers.conf" <<EOF
[containers]
netns = "host"
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
tmp_dir = "$STATE/tmp"
EOF
    cat >"$STATE/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$STATE/storage"
runroot = "$STATE/run"
EOF
    # No registry is reachable: images are local (localhost/...) and short names are never looked up.
    cat >"$STATE/registries.conf" <<EOF
unqualified-search-registries = []
short-name-mode = "enforcing"
EOF
}

export CONTAINERS_CONF="$STATE/containers.conf"
export CONTAINERS_STORAGE_CONF="$STATE/storage.conf"
export CONTAINERS_REGISTRIES_CONF="$STATE/registries.conf"

# The Debian mirror apt uses on this machine (deb822 or one-line sources), for the base image.
debian_mirror() {
    local uri
    uri="$(awk '/^URIs:/ {u=$2} /^Suites:/ && / bookworm( |$)/ {print u; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
    [[ -n "$uri" ]] || uri="$(awk '$1=="deb" && $3=="bookworm" {print $2; exit}' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)"
    echo "${uri:-http://deb.debian.org/debian}"
}

build_base() {
    if podman image exists "$BASE_IMAGE"; then
        log "base image $BASE_IMAGE is cached"
        return
    fi
    local tar="$STATE/base.tar" mirror
    mirror="$(debian_mirror)"
    log "building base image $BASE_IMAGE from $mirror (mmdebstrap)"
    # env -i: the host's PIP_* / proxy-free environment must not leak into the chroot's maintainer scripts.
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        mmdebstrap --quiet --variant=minbase --format=tar \
        --include=python3,ca-certificates \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
        bookworm "$tar" "deb $mirror bookworm main"
    podman import \
        --change 'ENV PIP_BREAK_SYSTEM_PACKAGES=1' \
        --change 'ENV UV_NO_CACHE=1' \
        --change "ENV SSL_CERT_FILE=$CA_BUNDLE" \
        --change 'CMD ["/bin/bash"]' \
        "$tar" "$BASE_IMAGE" >/dev/null
    rm -f "$tar"
}

image_mb() {
    local bytes
    bytes="$(podman image inspect --format '{{.Size}}' "$IMAGE_REF")"
    echo $((bytes / 1000000))
}

cmd_build() {
    bash "$ROOT/scripts/system-deps.sh" image
    write_container_config
    cd "$ROOT"
    export BENTOML_DO_NOT_TRACK=true
    log "models (BENTOML_HOME=${BENTOML_HOME:-~/bentoml})"
    "$VENV/bin/python" -m models.train --if-missing
    # bentoml locks the image's requirements with uv (pinned here rather than its unpinned self-install).
    [[ -x "$VENV/bin/uv" ]] || "$VENV/bin/pip" install --quiet "uv==$UV_VERSION"
    log "bento"
    local tag
    # uv locks the requirements against the index; it needs the host CA bundle, not its built-in roots.
    tag="$(PATH="$VENV/bin:$PATH" SSL_CERT_FILE="$CA_BUNDLE" "$VENV/bin/bentoml" build --output tag | tail -n1)"
    tag="${tag#__tag__:}"
    log "bento $tag"
    build_base
    log "image $IMAGE_REF (buildah)"
    local built="${IMAGE_REF%:*}:build"
    # env -i: host pip config (PIP_FIND_LINKS, /etc/pip.conf indexes on local paths) must not reach the build.
    # Bind-mounted into the build steps only, never baked in: the host CA bundle (the index is reachable only
    # with it) and our pinned uv (else the Dockerfile pip-installs an unpinned one, and the base needs pip).
    # Through the Python API: the CLI's `--opt volume=` joins several volumes into one invalid spec.
    env -i PATH="$VENV/bin:/usr/sbin:/usr/bin:/sbin:/bin" HOME="$HOME" \
        BENTOML_HOME="${BENTOML_HOME:-$HOME/bentoml}" BENTOML_DO_NOT_TRACK=true \
        CONTAINERS_CONF="$CONTAINERS_CONF" CONTAINERS_STORAGE_CONF="$CONTAINERS_STORAGE_CONF" \
        CONTAINERS_REGISTRIES_CONF="$CONTAINERS_REGISTRIES_CONF" \
        "$VENV/bin/python" - "$tag" "$built" "$CA_BUNDLE:$CA_BUNDLE:ro" "$VENV/bin/uv:/usr/local/bin/uv:ro" <<'PY'
import sys

import bentoml

tag, image_tag, *volumes = sys.argv[1:]
bentoml.container.build(tag, backend="buildah", image_tag=(image_tag,), volume=volumes)
PY
    # The generated Dockerfile exposes 3000 only; the OIP gRPC port is ours to declare.
    local ctr
    ctr="$(buildah from "$built")"
    buildah config --port 8001 --label "org.opencontainers.image.title=fraud_detection" \
        --label "ai.bentoml.bento=$tag" "$ctr"
    buildah commit --quiet --rm "$ctr" "$IMAGE_REF" >/dev/null
    buildah rmi "$built" >/dev/null
    if podman run --rm --entrypoint /bin/sh "$IMAGE_REF" -c 'command -v gcc || command -v cc || command -v git'; then
        log "a compiler toolchain landed in the image"
        exit 1
    fi
    local mb
    mb="$(image_mb)"
    log "built $IMAGE_REF from bento $tag: $mb MB (budget $IMAGE_MAX_MB MB)"
    echo "image=$IMAGE_REF bento=$tag size_mb=$mb"
    if ((mb > IMAGE_MAX_MB)); then
        log "image is over budget"
        exit 1
    fi
}

# The serving image leaves out pyarrow (NOT_SERVED in fraudserve/image.py), which fraud-batch reads and writes
# with, and has no console scripts (the bento holds the sources, not an installed project).
cmd_build_batch() {
    write_container_config
    podman image exists "$IMAGE_REF" || cmd_build
    [[ -x "$VENV/bin/uv" ]] || "$VENV/bin/pip" install --quiet "uv==$UV_VERSION"
    local pin ctr mb
    pin="$(grep -E '^pyarrow==' "$ROOT/requirements.txt")"
    log "batch image $BATCH_IMAGE_REF: $IMAGE_REF + $pin"
    ctr="$(buildah from "$IMAGE_REF")"
    buildah run --user root --env "SSL_CERT_FILE=$CA_BUNDLE" \
        --volume "$CA_BUNDLE:$CA_BUNDLE:ro" --volume "$VENV/bin/uv:/usr/local/bin/uv:ro" "$ctr" -- \
        sh -c "uv pip install --quiet --python /app/.venv/bin/python '$pin' &&
            find /app/.venv/lib -depth -type d -name tests -path '*pyarrow*' -exec rm -rf {} + &&
            printf '%s\n' '#!/bin/sh' 'export PYTHONPATH=\"\$BENTO_PATH/src\${PYTHONPATH:+:\$PYTHONPATH}\"' \
                'exec /app/.venv/bin/python -m fraudserve.batch.cli \"\$@\"' >/app/.venv/bin/fraud-batch &&
            chmod 755 /app/.venv/bin/fraud-batch"
    buildah config --label "org.opencontainers.image.title=fraud_detection_batch" "$ctr"
    buildah commit --quiet --rm "$ctr" "$BATCH_IMAGE_REF" >/dev/null
    podman run --rm --entrypoint /bin/sh "$BATCH_IMAGE_REF" -c 'fraud-batch --help >/dev/null'
    mb="$(IMAGE_REF="$BATCH_IMAGE_REF" image_mb)"
    log "built $BATCH_IMAGE_REF: $mb MB"
    echo "image=$BATCH_IMAGE_REF size_mb=$mb"
}

wait_ready() {
    local url="http://127.0.0.1:$HTTP_PORT/readyz" deadline=$((SECONDS + READY_TIMEOUT_S))
    [[ "$HOST" == "0.0.0.0" || "$HOST" == "127.0.0.1" ]] || url="http://$HOST:$HTTP_PORT/readyz"
    while ((SECONDS < deadline)); do
        if [[ "$(podman inspect --format '{{.State.Running}}' "$CONTAINER" 2>/dev/null)" != "true" ]]; then
            log "container $CONTAINER exited:"
            podman logs --tail 60 "$CONTAINER" >&2 || true
            return 1
        fi
        if curl -fs -o /dev/null --max-time 5 "$url"; then
            log "ready: REST http://$HOST:$HTTP_PORT  gRPC $HOST:$GRPC_PORT"
            return 0
        fi
        sleep 0.5
    done
    log "not ready after ${READY_TIMEOUT_S}s:"
    podman logs --tail 60 "$CONTAINER" >&2 || true
    return 1
}

cmd_start() {
    write_container_config
    podman image exists "$IMAGE_REF" || { log "no image $IMAGE_REF: run scripts/image.sh build"; exit 1; }
    podman rm --force --ignore "$CONTAINER" >/dev/null
    local net=(--network host)
    [[ "$NETWORK" == host ]] || net=(--network "$NETWORK" -p "$HTTP_PORT:$HTTP_PORT" -p "$GRPC_PORT:$GRPC_PORT")
    log "starting $IMAGE_REF as $CONTAINER"
    # PORT is how the bento entrypoint takes the HTTP port; a leading flag is appended to `bentoml serve`.
    podman run --detach --name "$CONTAINER" "${net[@]}" --stop-timeout 20 \
        --env 'FRAUD_*' --env "PORT=$HTTP_PORT" --env "FRAUD_GRPC_PORT=$GRPC_PORT" --env "FRAUD_GRPC_HOST=$HOST" \
        "$IMAGE_REF" --host "$HOST" >/dev/null
    wait_ready || { cmd_stop; exit 1; }
}

cmd_stop() {
    write_container_config
    if podman container exists "$CONTAINER"; then
        log "stopping $CONTAINER"
        podman stop --time 20 "$CONTAINER" >/dev/null
        podman rm --force --ignore "$CONTAINER" >/dev/null
    fi
}

cmd_run() {
    cmd_start
    trap 'cmd_stop; exit 0' INT TERM
    podman logs --follow "$CONTAINER" &
    wait $!
}

case "${1:-}" in
build) cmd_build ;;
build-batch) cmd_build_batch ;;
start) cmd_start ;;
stop) cmd_stop ;;
run) cmd_run ;;
size) write_container_config && echo "$(image_mb) MB" ;;
env) write_container_config && env | grep '^CONTAINERS_' | sed 's/^/export /' ;;
*)
    sed -n '2,23p' "$0" >&2
    exit 2
    ;;
esac
