"""Malformed OIP gRPC tensors against the real server: a status code naming the problem, never a crash.

Requests are built with tritonclient's copy of the ``inference`` proto (the one this test
process already holds; see tests/unit/test_oip_proto.py for why not ours). Allowed answers:
OK or a client-side code; INTERNAL/UNKNOWN would mean an unmapped error, a dead worker shows as
a changed PID set.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc
import httpx
import psutil
import pytest
import tritonclient.grpc.service_pb2 as pb
import tritonclient.grpc.service_pb2_grpc as pb_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraudserve.launcher import BundleServer
from models.transactions import TRANSACTION_SCHEMA

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
}
FEATURES = [f.name for f in TRANSACTION_SCHEMA.features]
DATATYPES = ["BOOL", "INT8", "INT32", "INT64", "UINT8", "UINT64", "FP16", "FP32", "FP64", "BYTES", "", "fp64", "X"]
CONTENT_FIELDS = [f.name for f in pb.InferTensorContents.DESCRIPTOR.fields]
METHOD = "/inference.GRPCInferenceService/ModelInfer"


def _values(field: str) -> st.SearchStrategy[list[object]]:
    if field == "bool_contents":
        return st.lists(st.booleans(), max_size=8)
    if field in ("fp32_contents", "fp64_contents"):
        return st.lists(st.floats(width=32 if field == "fp32_contents" else 64), max_size=8)
    if field == "bytes_contents":
        return st.lists(st.binary(max_size=12), max_size=8)
    bits, signed = {"int_contents": (31, True), "int64_contents": (63, True)}.get(field, (32, False))
    low = -(2**bits) if signed else 0
    high = 2**bits - 1 if signed else 2 ** (bits if field == "uint_contents" else 64) - 1
    return st.lists(st.integers(low, high), max_size=8)


@st.composite
def tensors(draw: st.DrawFn) -> pb.ModelInferRequest.InferInputTensor:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name=draw(st.sampled_from([*FEATURES, "", "nope", "amount\x00"])),
        datatype=draw(st.sampled_from(DATATYPES)),
        shape=draw(st.lists(st.sampled_from([-1, 0, 1, 2, 3, 8, 2**31]), max_size=3)),
    )
    if draw(st.booleans()):
        field = draw(st.sampled_from(CONTENT_FIELDS))
        getattr(tensor.contents, field).extend(draw(_values(field)))
    return tensor


@st.composite
def infer_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    inputs = draw(st.lists(tensors(), max_size=len(FEATURES) + 2))
    request = pb.ModelInferRequest(
        model_name=draw(st.sampled_from(["fraud_ensemble", "fraud_hgb", "", "nope"])),
        model_version=draw(st.sampled_from(["", "vtest1", "v0"])),
        inputs=inputs,
    )
    if inputs and draw(st.booleans()):
        count = draw(st.sampled_from([len(inputs), len(inputs) - 1, len(inputs) + 1]))
        request.raw_input_contents.extend(draw(st.lists(st.binary(max_size=64), min_size=count, max_size=count)))
    return request


@pytest.fixture(scope="module")
def channel(server: BundleServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as opened:
        yield opened


@pytest.fixture(scope="module")
def processes_before(server: BundleServer) -> dict[int, float]:
    assert server.process is not None
    root = psutil.Process(server.process.pid)
    return {p.pid: p.create_time() for p in (root, *root.children(recursive=True))}


def code_of(call: object) -> grpc.StatusCode:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_malformed_tensors_get_client_error_codes(channel: grpc.Channel, processes_before: dict[int, float]) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)

    @given(request=infer_requests())
    @settings(
        max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
    )
    def run(request: pb.ModelInferRequest) -> None:
        code = code_of(lambda: stub.ModelInfer(request, timeout=30))
        assert code in ALLOWED, (code, request)

    run()


def test_bytes_that_are_not_a_request(channel: grpc.Channel, processes_before: dict[int, float]) -> None:
    raw = channel.unary_unary(METHOD)

    @given(payload=st.binary(max_size=256))
    @settings(
        max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
    )
    def run(payload: bytes) -> None:
        code = code_of(lambda: raw(payload, timeout=30))
        try:
            pb.ModelInferRequest.FromString(payload)
        except Exception:  # noqa: BLE001 - undecodable: grpc-python answers before any of our code runs
            # grpc-python's own answer to a DecodeError (measured with grpcio 1.81): the one UNKNOWN there is.
            assert code == grpc.StatusCode.UNKNOWN, code
            return
        assert code in ALLOWED, (code, payload)

    run()


def test_huge_dimension_is_invalid_argument(channel: grpc.Channel) -> None:
    tensor = pb.ModelInferRequest.InferInputTensor(name="amount", datatype="BOOL", shape=[0, 2, 2**62])
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    code = code_of(
        lambda: stub.ModelInfer(pb.ModelInferRequest(model_name="fraud_ensemble", inputs=[tensor]), timeout=30)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT, code


def test_server_survived(server: BundleServer, processes_before: dict[int, float]) -> None:
    assert httpx.get(server.url + "/readyz", timeout=30).status_code == 200
    root = psutil.Process(server.process.pid)  # type: ignore[union-attr]
    assert {p.pid: p.create_time() for p in (root, *root.children(recursive=True))} == processes_before
