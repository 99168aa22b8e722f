"""Traces of the real bundle reach a real OTLP/gRPC receiver: one trace per request, entry -> batch -> runners."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from fraudserve.launcher import BundleServer, free_port
from models.transactions import generate_transactions

pytestmark = pytest.mark.integration

RUNNERS = {"fraud_hgb_runner", "fraud_logreg_runner", "fraud_iforest_runner"}


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    links: tuple[str, ...]


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace collector that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest, context: object) -> object:
        with self.lock:
            for resource_spans in request.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for s in scope.spans:
                        self.spans.append(
                            Span(
                                attributes.get("service.name", ""),
                                s.name,
                                s.trace_id.hex(),
                                s.span_id.hex(),
                                s.parent_span_id.hex(),
                                tuple(link.span_id.hex() for link in s.links),
                            )
                        )
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: str, root_parent: str, root_name: str, *, timeout_s: float = 60.0) -> list[Span]:
        """The spans of one trace once its root, three entry batches and every runner's spans have arrived
        (spans are exported in the background, each service on its own schedule)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self.lock:
                found = [s for s in self.spans if s.trace_id == trace_id]
            complete = (
                any(s.parent_id == root_parent and s.name.startswith(root_name) for s in found)
                and sum(s.name == "entry_batch" for s in found) >= 3
                and {s.service for s in found} >= RUNNERS
            )
            if complete or time.monotonic() > deadline:
                return found
            time.sleep(0.2)


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, int]]:
    port = free_port()
    collector = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    yield collector, port
    server.stop(grace=None)


@pytest.fixture(scope="module")
def traced(trained: str, bentoml_home: Path, receiver: tuple[Receiver, int]) -> Iterator[BundleServer]:
    # The span processor exports every 5 s by default; 200 ms keeps the test short.
    # The runners score the entry batches here, so the trace crosses every process.
    env = {
        "FRAUD_OTLP_ENDPOINT": f"127.0.0.1:{receiver[1]}",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "FRAUD_MEMBER_PLACEMENT": "runners",
    }
    with BundleServer(env=env, bentoml_home=bentoml_home) as server:
        yield server


def _row() -> dict[str, object]:
    return generate_transactions(1, seed=8).drop(columns="is_fraud").to_dict("records")[0]  # type: ignore[no-any-return]


def _check_linked(spans: list[Span], root: Span) -> None:
    """Every runner's span descends from the entry's span through an entry batch of this trace."""
    by_id = {s.span_id: s for s in spans}

    def ancestors(span: Span) -> list[Span]:
        chain = []
        while span.parent_id in by_id:
            span = by_id[span.parent_id]
            chain.append(span)
        return chain

    batches = [s for s in spans if s.name == "entry_batch"]
    assert len(batches) >= 3, [s.name for s in spans]  # one per member runner
    assert all(root in ancestors(b) for b in batches)
    for service in RUNNERS:
        served = [s for s in spans if s.service == service]
        assert served, f"no span from {service}"
        assert any(any(a.name == "entry_batch" for a in ancestors(s)) for s in served), service


def test_predict_is_one_trace_from_the_callers_traceparent_to_the_runners(
    traced: BundleServer, receiver: tuple[Receiver, int]
) -> None:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    response = httpx.post(
        traced.url + "/predict",
        json={"transactions": _row()},
        headers={"traceparent": f"00-{trace_id}-{parent}-01"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    spans = receiver[0].trace(trace_id, parent, "POST /predict")
    entry = [s for s in spans if s.service == "fraud_detection" and s.parent_id == parent and s.name == "POST /predict"]
    assert entry, "\n".join(str((s.service, s.name, s.span_id, s.parent_id)) for s in spans)
    _check_linked(spans, entry[0])


def test_grpc_model_infer_is_one_trace_under_the_metadata_traceparent(
    traced: BundleServer, receiver: tuple[Receiver, int]
) -> None:
    import numpy as np
    import tritonclient.grpc as tgrpc

    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    types = {float: ("FP64", np.float64), int: ("INT64", np.int64), bool: ("BOOL", np.bool_), str: ("BYTES", object)}
    inputs = []
    for name, value in _row().items():
        datatype, dtype = types[type(value)]
        tensor = tgrpc.InferInput(name, [1], datatype)
        tensor.set_data_from_numpy(np.array([value], dtype=dtype))
        inputs.append(tensor)
    client = tgrpc.InferenceServerClient(f"127.0.0.1:{traced.grpc_port}")
    try:
        client.infer("fraud_ensemble", inputs, headers={"traceparent": f"00-{trace_id}-{parent}-01"})
    finally:
        client.close()
    spans = receiver[0].trace(trace_id, parent, "oip.ModelInfer")
    roots = [s for s in spans if s.name == "oip.ModelInfer" and s.parent_id == parent]
    assert roots, [(s.service, s.name, s.parent_id) for s in spans]
    _check_linked(spans, roots[0])


def test_fraud_batch_exports_a_span_per_chunk(trained: str, tmp_path: Path, receiver: tuple[Receiver, int]) -> None:
    import os
    import subprocess
    import sys

    source = tmp_path / "in.parquet"
    generate_transactions(1_000, seed=3).drop(columns="is_fraud").to_parquet(source)
    env = {**os.environ, "FRAUD_OTLP_ENDPOINT": f"127.0.0.1:{receiver[1]}"}
    args = [str(source), str(tmp_path / "out"), "--model-version", trained, "--chunk-rows", "250", "-q"]
    done = subprocess.run(
        [sys.executable, "-m", "fraudserve.batch.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    # The CLI flushes its spans before it exits: they are here already.
    chunks = [s for s in receiver[0].spans if s.service == "fraud-batch" and s.name == "batch.chunk"]
    assert len(chunks) == 4, [(s.service, s.name) for s in receiver[0].spans[-10:]]


def test_fraud_stream_exports_a_span_per_micro_batch(
    trained: str, tmp_path: Path, receiver: tuple[Receiver, int]
) -> None:
    import os
    import signal
    import subprocess
    import sys

    from fraudserve.stream.local_redis import LocalRedis

    with LocalRedis() as redis_server:
        env = {
            **os.environ,
            "FRAUD_REDIS_URL": redis_server.url,
            "FRAUD_MODEL_VERSION": trained,
            "FRAUD_OTLP_ENDPOINT": f"127.0.0.1:{receiver[1]}",
            "FRAUD_STREAM_METRICS_PORT": "0",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        }
        cli = [sys.executable, "-m", "fraudserve.stream.cli"]
        produced = subprocess.run([*cli, "produce", "--generate", "300"], env=env, capture_output=True, timeout=120)
        assert produced.returncode == 0, produced.stderr
        worker = subprocess.Popen([*cli, "worker", "--consumer", "traced"], env=env, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with receiver[0].lock:
                    batches = [s for s in receiver[0].spans if s.name == "stream.micro_batch"]
                if batches:
                    break
                time.sleep(0.2)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
    assert batches, "no stream.micro_batch span arrived"
    assert all(s.service == "fraud-stream:traced" for s in batches)
