#!/usr/bin/env bash
# Generate the Python stubs of the OIP gRPC API from fraudserve/oip/proto/*.proto.
#
#   bash scripts/gen_protos.sh            # rewrite the checked-in stubs
#   bash scripts/gen_protos.sh OUT_DIR    # write them under OUT_DIR instead (the drift test does this)
#
# Uses the venv's grpcio-tools (pinned in requirements-dev.txt): its protoc decides the
# generated code, and the stubs must import under the pinned protobuf runtime.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root}"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3

mkdir -p "$out"
cd "$root"
# Paths relative to the repo root, so the *_pb2_grpc module imports its *_pb2 as a package module.
"$python" -m grpc_tools.protoc -I . \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  fraudserve/oip/proto/grpc_service.proto
