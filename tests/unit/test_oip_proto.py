"""The checked-in OIP stubs match their proto, and the proto speaks the wire format Triton clients use.

Neither test imports the generated module here: this process may also hold tritonclient's copy
of the ``inference`` proto package, and two copies in one process collide.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = Path("fraudserve/oip/proto")
GENERATED = ("grpc_service_pb2.py", "grpc_service_pb2.pyi", "grpc_service_pb2_grpc.py")

# Prints every message's fields and the service's methods of the given module's proto file.
_DUMP = """
import importlib, json, sys
from google.protobuf import descriptor_pb2
proto = descriptor_pb2.FileDescriptorProto()
importlib.import_module(sys.argv[1]).DESCRIPTOR.CopyToProto(proto)
out = {}
def walk(message, prefix):
    name = prefix + message.name
    out[name] = sorted([f.number, f.name, f.type, f.label, f.type_name] for f in message.field)
    for nested in message.nested_type:
        walk(nested, name + ".")
for message in proto.message_type:
    walk(message, "")
out["rpc"] = {m.name: [m.input_type, m.output_type, m.client_streaming, m.server_streaming]
              for s in proto.service for m in s.method}
print(json.dumps({"package": proto.package, "messages": out}))
"""


def test_generated_stubs_match_the_proto(tmp_path: Path) -> None:
    subprocess.run(
        ["bash", str(ROOT / "scripts/gen_protos.sh"), str(tmp_path)],
        check=True,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
        capture_output=True,
    )
    for name in GENERATED:
        fresh = (tmp_path / PROTO_DIR / name).read_bytes()
        assert fresh == (ROOT / PROTO_DIR / name).read_bytes(), f"{name} is stale: run scripts/gen_protos.sh"


def _describe(module: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", _DUMP, module], check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_wire_compatible_with_tritonclient() -> None:
    ours = _describe("fraudserve.oip.proto.grpc_service_pb2")
    theirs = _describe("tritonclient.grpc.service_pb2")
    assert ours["package"] == theirs["package"] == "inference"
    our_messages, their_messages = ours["messages"], theirs["messages"]
    assert isinstance(our_messages, dict) and isinstance(their_messages, dict)
    for name, fields in our_messages.items():
        if name == "rpc":
            for method, signature in fields.items():
                assert their_messages["rpc"][method] == signature, method
        else:
            assert their_messages[name] == fields, name
