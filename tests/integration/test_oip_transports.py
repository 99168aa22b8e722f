"""The Open Inference Protocol on the real server, spoken by off-the-shelf Triton clients.

REST (/v2) through tritonclient.http (binary tensors) and plain JSON; gRPC through
tritonclient.grpc (unary, streaming, aio under load), the health service and reflection.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio
import tritonclient.http as thttp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.utils import InferenceServerException

from fraudserve.launcher import BundleServer
from models.transactions import TRANSACTION_SCHEMA, generate_transactions

pytestmark = pytest.mark.integration

DATATYPES = {"float": "FP64", "int": "INT64", "bool": "BOOL", "category": "BYTES"}
NUMPY: dict[str, Any] = {"FP64": np.float64, "INT64": np.int64, "BOOL": np.bool_, "BYTES": np.object_}
MEMBERS = ("hgb", "logreg", "iforest")


def frame(n: int, seed: int) -> pd.DataFrame:
    return generate_transactions(n, seed=seed).drop(columns="is_fraud")


def columns(df: pd.DataFrame) -> list[tuple[str, str, np.ndarray]]:
    """(name, datatype, values) of one tensor per feature, typed as the model metadata advertises."""
    out = []
    for f in TRANSACTION_SCHEMA.features:
        datatype = DATATYPES[f.kind]
        out.append((f.name, datatype, df[f.name].to_numpy().astype(NUMPY[datatype])))
    return out


def triton_inputs(client_module: Any, df: pd.DataFrame) -> list[Any]:
    inputs = []
    for name, datatype, array in columns(df):
        tensor = client_module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def rest_predict(server: BundleServer, df: pd.DataFrame) -> dict[str, np.ndarray]:
    body = httpx.post(server.url + "/predict", json={"transactions": df.to_dict("records")}, timeout=30).json()
    predictions = body["predictions"]
    scores = {f"{m}_score": np.array([p["scores"][m] for p in predictions]) for m in MEMBERS}
    return {
        "fraud_probability": np.array([p["fraud_probability"] for p in predictions]),
        "is_fraud": np.array([p["is_fraud"] for p in predictions]),
        **scores,
    }


@pytest.fixture(scope="module")
def http_client(server: BundleServer) -> Iterator[thttp.InferenceServerClient]:
    client = thttp.InferenceServerClient(f"127.0.0.1:{server.port}", concurrency=4)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(server: BundleServer) -> Iterator[tgrpc.InferenceServerClient]:
    client = tgrpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    yield client
    client.close()


def test_rest_health_metadata_and_index(server: BundleServer, http_client: thttp.InferenceServerClient) -> None:
    assert http_client.is_server_live()
    assert http_client.is_server_ready()
    assert http_client.is_model_ready("fraud_ensemble")
    assert http_client.is_model_ready("fraud_iforest", "vtest1")
    assert "binary_tensor_data" in http_client.get_server_metadata()["extensions"]
    meta = http_client.get_model_metadata("fraud_ensemble", "vtest1")
    assert meta["versions"] == ["vtest1"]
    assert meta["platform"] == "sklearn_ensemble"
    assert [i["name"] for i in meta["inputs"]] == TRANSACTION_SCHEMA.names
    assert {i["name"]: i["datatype"] for i in meta["inputs"]}["merchant_category"] == "BYTES"
    assert [o["name"] for o in meta["outputs"]] == ["fraud_probability", "is_fraud", *(f"{m}_score" for m in MEMBERS)]
    assert [m["name"] for m in http_client.get_model_repository_index()] == [
        "fraud_ensemble",
        *(f"fraud_{m}" for m in MEMBERS),
    ]


def test_rest_infer_binary_and_json_equal_predict(
    server: BundleServer, http_client: thttp.InferenceServerClient
) -> None:
    df = frame(9, seed=31)
    expected = rest_predict(server, df)
    result = http_client.infer("fraud_ensemble", triton_inputs(thttp, df), request_id="req-7")
    assert result.get_response()["id"] == "req-7"
    for name, values in expected.items():
        np.testing.assert_allclose(result.as_numpy(name), values, rtol=1e-12, err_msg=name)

    # Plain JSON, an encoded "features" matrix, a member model, a selected output.
    encoded = TRANSACTION_SCHEMA.encode_records(df.to_dict("records"))
    body = {
        "id": "json-1",
        "inputs": [{"name": "features", "datatype": "FP64", "shape": list(encoded.shape), "data": encoded.tolist()}],
        "outputs": [{"name": "hgb_score"}],
    }
    response = httpx.post(server.url + "/v2/models/fraud_hgb/versions/vtest1/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    doc = response.json()
    assert (doc["id"], doc["model_name"], doc["model_version"]) == ("json-1", "fraud_hgb", "vtest1")
    [output] = doc["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("hgb_score", "FP64", [9])
    np.testing.assert_allclose(output["data"], expected["hgb_score"], rtol=1e-12)


@pytest.mark.parametrize(
    ("path", "body", "status", "text"),
    [
        ("/v2/models/fraud_xgb/infer", None, 404, "unknown model 'fraud_xgb'"),
        ("/v2/models/fraud_ensemble/versions/v0/infer", None, 404, "no version 'v0'"),
        ("/v2/models/fraud_ensemble/infer", {"inputs": []}, 400, "no inputs"),
        ("/v2/models/fraud_ensemble/infer", {"inputs": [{"name": "amount"}]}, 400, "inputs.0.shape"),
        ("/v2/models/fraud_ensemble/infer", b"{", 400, "malformed"),
        (
            "/v2/models/fraud_ensemble/infer",
            {"inputs": [{"name": "features", "datatype": "FP64", "shape": [1, 10], "data": [0.0] * 9 + [-1.0]}]},
            400,
            "account_age_days",
        ),
    ],
)
def test_rest_errors(server: BundleServer, path: str, body: Any, status: int, text: str) -> None:
    if body is None:
        df = frame(1, seed=1)
        body = {"inputs": [{"name": n, "datatype": d, "shape": [1], "data": a.tolist()} for n, d, a in columns(df)]}
    content = body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).content
    response = httpx.post(server.url + path, content=content, timeout=30)
    assert response.status_code == status, response.text
    assert text in response.json()["error"]


def test_grpc_health_metadata_and_index(grpc_client: tgrpc.InferenceServerClient) -> None:
    assert grpc_client.is_server_live()
    assert grpc_client.is_server_ready()
    assert grpc_client.is_model_ready("fraud_logreg", "vtest1")
    assert grpc_client.get_server_metadata().name == "fraud_detection"
    meta = grpc_client.get_model_metadata("fraud_logreg")
    assert (meta.name, list(meta.versions), meta.platform) == ("fraud_logreg", ["vtest1"], "sklearn")
    assert [o.name for o in meta.outputs] == ["logreg_score"]
    index = [m.name for m in grpc_client.get_model_repository_index().models]
    assert index == ["fraud_ensemble", *(f"fraud_{m}" for m in MEMBERS)]


def test_grpc_infer_equals_rest_predict(server: BundleServer, grpc_client: tgrpc.InferenceServerClient) -> None:
    df = frame(6, seed=41)
    expected = rest_predict(server, df)
    result = grpc_client.infer("fraud_ensemble", triton_inputs(tgrpc, df), request_id="g-1")
    assert result.get_response().id == "g-1"
    for name, values in expected.items():
        np.testing.assert_allclose(result.as_numpy(name), values, rtol=1e-12, err_msg=name)
    member = grpc_client.infer(
        "fraud_iforest",
        triton_inputs(tgrpc, df),
        model_version="vtest1",
        outputs=[tgrpc.InferRequestedOutput("iforest_score")],
    )
    np.testing.assert_allclose(member.as_numpy("iforest_score"), expected["iforest_score"], rtol=1e-12)


def _grpc_error(grpc_client: tgrpc.InferenceServerClient, model: str, df: pd.DataFrame, **kwargs: Any) -> Any:
    with pytest.raises(InferenceServerException) as info:
        grpc_client.infer(model, triton_inputs(tgrpc, df), **kwargs)
    return info.value


def test_grpc_error_codes(server: BundleServer, grpc_client: tgrpc.InferenceServerClient) -> None:
    df = frame(2, seed=3)
    unknown = _grpc_error(grpc_client, "fraud_xgb", df)
    assert unknown.status() == "StatusCode.NOT_FOUND"
    assert _grpc_error(grpc_client, "fraud_hgb", df, model_version="v0").status() == "StatusCode.NOT_FOUND"
    bad = df.copy()
    bad.loc[1, "hour"] = 30
    out_of_range = _grpc_error(grpc_client, "fraud_ensemble", bad)
    assert out_of_range.status() == "StatusCode.INVALID_ARGUMENT"
    assert "inputs[1].hour" in out_of_range.message()
    wrong_type = tgrpc.InferInput("amount", [2], "BYTES")
    wrong_type.set_data_from_numpy(np.array([b"1", b"2"], dtype=object))
    with pytest.raises(InferenceServerException) as info:
        grpc_client.infer("fraud_ensemble", [wrong_type, *triton_inputs(tgrpc, df)[1:]])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "amount" in info.value.message()
    with pytest.raises(InferenceServerException) as unimplemented:
        grpc_client.get_model_config("fraud_ensemble")
    assert unimplemented.value.status() == "StatusCode.UNIMPLEMENTED"
    metrics = server.metrics()
    for code in ("NOT_FOUND", "INVALID_ARGUMENT"):
        assert f'fraud_grpc_requests_total{{code="{code}",method="ModelInfer"}}' in metrics


def test_grpc_stream_infer(server: BundleServer, grpc_client: tgrpc.InferenceServerClient) -> None:
    df = frame(8, seed=51)
    expected = rest_predict(server, df)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    grpc_client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(len(df)):
            grpc_client.async_stream_infer("fraud_ensemble", triton_inputs(tgrpc, df.iloc[[i]]), request_id=str(i))
        grpc_client.async_stream_infer("fraud_xgb", triton_inputs(tgrpc, df.iloc[[0]]), request_id="bad")
        received = [answers.get(timeout=30) for _ in range(len(df) + 1)]
    finally:
        grpc_client.stop_stream()
    errors = [error for result, error in received if error is not None]
    assert len(errors) == 1
    assert "NOT_FOUND" in str(errors[0])
    scores = {int(r.get_response().id): float(r.as_numpy("fraud_probability")[0]) for r, e in received if e is None}
    np.testing.assert_allclose([scores[i] for i in range(len(df))], expected["fraud_probability"], rtol=1e-12)


def test_grpc_health_service_and_reflection(server: BundleServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        assert check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING
        served = check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"))
        assert served.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
        [answer] = list(reflect(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in answer.list_services_response.service}
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


def _entry_batches(metrics: str) -> tuple[float, float]:
    """(entry batches, requests they carried) for the hgb member, summed over the API workers."""
    totals = {"count": 0.0, "sum": 0.0}
    for line in metrics.splitlines():
        found = re.match(r'fraud_entry_batch_requests_(count|sum)\{[^}]*model="hgb"[^}]*\} ([0-9.e+]+)', line)
        if found:
            totals[found.group(1)] += float(found.group(2))
    return totals["count"], totals["sum"]


def test_concurrent_grpc_requests_are_batched_and_correct(server: BundleServer) -> None:
    df = frame(120, seed=61)
    before = _entry_batches(server.metrics())

    async def fire() -> list[float]:
        client = tgrpc_aio.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        try:

            async def one(i: int) -> float:
                result = await client.infer("fraud_ensemble", triton_inputs(tgrpc_aio, df.iloc[[i]]))
                return float(result.as_numpy("fraud_probability")[0])

            return await asyncio.gather(*(one(i) for i in range(len(df))))
        finally:
            await client.close()

    got = asyncio.run(fire())
    after = _entry_batches(server.metrics())
    # Only now: REST first would put these rows in the core's score cache, and gRPC would never batch.
    np.testing.assert_allclose(got, rest_predict(server, df)["fraud_probability"], rtol=1e-12)
    batches, carried = after[0] - before[0], after[1] - before[1]
    # Every gRPC request went through the entry batcher exactly once. Whether two of them share a batch depends
    # on their arrival (members in the API worker score a batch in well under a millisecond): the merging
    # itself is tested without a clock in tests/unit/test_batcher.py.
    assert carried == len(df), (carried, len(df))
    assert 1 <= batches <= len(df), (batches, len(df))
    metrics = server.metrics()
    served = re.search(r'fraud_grpc_requests_total\{code="OK",method="ModelInfer"\} ([0-9.]+)', metrics)
    assert served and float(served.group(1)) >= len(df)
    assert 'fraud_grpc_request_duration_seconds_bucket{code="OK"' in metrics


def _children(pid: int) -> dict[int, str]:
    """Direct child processes of ``pid`` and their command lines."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found[int(stat.parent.name)] = cmdline
    return found


def test_a_stalled_runner_is_unavailable_never_unknown(trained: str, bentoml_home: Path) -> None:
    # The runners score the entry batches here (in-process members would not notice a stalled runner).
    env = {"FRAUD_RUNNER_TIMEOUT_S": "2", "FRAUD_READY_PROBE_TIMEOUT_S": "1", "FRAUD_MEMBER_PLACEMENT": "runners"}
    with BundleServer(env=env, bentoml_home=bentoml_home) as server:
        assert server.process is not None
        [runner] = [pid for pid, cmd in _children(server.process.pid).items() if "fraud_hgb_runner" in cmd]
        df = frame(1, seed=71)
        client = tgrpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        os.kill(runner, signal.SIGSTOP)
        try:
            with pytest.raises(InferenceServerException) as info:
                client.infer("fraud_hgb", triton_inputs(tgrpc, df), client_timeout=30)
            assert info.value.status() == "StatusCode.UNAVAILABLE"
            assert "hgb" in info.value.message()
            assert not client.is_server_ready()
            assert client.is_model_ready("fraud_logreg")
            rest = httpx.post(
                server.url + "/v2/models/fraud_ensemble/infer",
                json={
                    "inputs": [{"name": n, "datatype": d, "shape": [1], "data": a.tolist()} for n, d, a in columns(df)]
                },
                timeout=30,
            )
            # BentoML's own request timeout (FRAUD_RUNNER_TIMEOUT_S is the entry service's too) may
            # answer 504 before the runner call's timeout surfaces as our 503: both say "retry".
            assert rest.status_code in (503, 504), rest.text
            assert "hgb" in rest.text or "seconds" in rest.text
        finally:
            os.kill(runner, signal.SIGCONT)
            client.close()
        assert 'fraud_grpc_requests_total{code="UNAVAILABLE",method="ModelInfer"}' in server.metrics()
