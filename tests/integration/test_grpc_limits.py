"""OIP gRPC limits on the real server: streams are rate-limited per message and bounded, health follows readiness.

One server with a low rate limit, a small per-stream bound and a short readiness cache.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.grpc.service_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fraudserve.launcher import BundleServer
from tests.integration.test_oip_transports import frame, triton_inputs

pytestmark = pytest.mark.integration

RATE_RPS = 2.0
BURST = 5
STREAM_MAX_INFLIGHT = 4
STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def limited(trained: str, bentoml_home: Path) -> Iterator[BundleServer]:
    env = {
        "FRAUD_RATE_LIMIT_RPS": str(RATE_RPS),
        "FRAUD_RATE_LIMIT_BURST": str(BURST),
        "FRAUD_GRPC_STREAM_MAX_INFLIGHT": str(STREAM_MAX_INFLIGHT),
        "FRAUD_READY_PROBE_TIMEOUT_S": "1",
        "FRAUD_READY_CACHE_S": "0.5",
    }
    with BundleServer(env=env, bentoml_home=bentoml_home) as running:
        yield running


def service_processes(server: BundleServer, name: str) -> list[psutil.Process]:
    """The worker processes BentoML started for one service (`... --service-name NAME ...`)."""
    assert server.process is not None
    found = []
    for process in psutil.Process(server.process.pid).children(recursive=True):
        args = process.cmdline()
        if "--service-name" in args and args[args.index("--service-name") + 1] == name:
            found.append(process)
    return found


def spare_tokens(n: int) -> None:
    """Wait until the (shared, per-IP) bucket holds ``n`` tokens again after an earlier test's flood."""
    time.sleep(n / RATE_RPS)


def stream_messages_served(server: BundleServer) -> float:
    """Stream messages the server has read and answered, whatever the answer."""
    pattern = r'fraud_grpc_requests_total\{[^}]*method="ModelStreamInfer"[^}]*\} ([0-9.e+]+)'
    return sum(float(v) for v in re.findall(pattern, server.metrics()))


def test_a_stream_flood_is_rate_limited_per_message(limited: BundleServer) -> None:
    df = frame(1, seed=81)
    client = tgrpc.InferenceServerClient(f"127.0.0.1:{limited.grpc_port}")
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    messages = 40
    started = time.monotonic()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(messages):
            client.async_stream_infer("fraud_ensemble", triton_inputs(tgrpc, df), request_id=str(i))
        received = [answers.get(timeout=60) for _ in range(messages)]
    finally:
        client.stop_stream()
        client.close()
    elapsed = time.monotonic() - started
    errors = [error.message() for _, error in received if error is not None]
    served = messages - len(errors)
    # The stream goes on: every message is answered, those past the budget with RESOURCE_EXHAUSTED.
    assert errors and all(e.startswith("RESOURCE_EXHAUSTED") for e in errors), errors[:3]
    assert 1 <= served <= BURST + RATE_RPS * elapsed + 1, (served, elapsed)


def test_a_client_that_never_reads_cannot_grow_server_memory(limited: BundleServer) -> None:
    [worker] = service_processes(limited, "fraud_detection")
    # Large ids make large echoed answers, so that flow control engages after a few messages.
    request = pb.ModelInferRequest(model_name="fraud_ensemble", id="x" * 16_384).SerializeToString()
    attempts = 3_000

    async def flood() -> int:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{limited.grpc_port}") as channel:
            call = channel.stream_stream(STREAM_METHOD)()
            written = 0
            try:
                for _ in range(attempts):
                    await asyncio.wait_for(call.write(request), timeout=3)
                    written += 1
            except TimeoutError:
                pass
            finally:
                call.cancel()
            return written

    spare_tokens(2)
    served_before = stream_messages_served(limited)
    rss_before = worker.memory_info().rss
    written = asyncio.run(flood())
    rss_growth = worker.memory_info().rss - rss_before
    served = stream_messages_served(limited) - served_before
    print(f"\nwritten {written} of {attempts}; server read {served}; RSS +{rss_growth / 2**20:.1f} MiB")
    assert written < attempts, "the server kept reading a stream nobody reads the answers of"
    assert served <= written
    # Past the bound, only HTTP/2 flow-control windows (a few MiB each way) hold messages.
    assert served * len(request) < 16 * 2**20, served
    assert rss_growth < 32 * 2**20, rss_growth


def test_grpc_health_follows_readiness_of_the_runners(limited: BundleServer) -> None:
    [runner] = service_processes(limited, "fraud_hgb_runner")
    client = tgrpc.InferenceServerClient(f"127.0.0.1:{limited.grpc_port}")

    def wait_for(status: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        seen = None
        while time.monotonic() < deadline:
            seen = check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
            if seen == status:
                return
            time.sleep(0.2)
        raise AssertionError(f"health still {seen} after {timeout_s} s, expected {status}")

    def states() -> dict[str, str]:
        return {m.name: m.state for m in client.get_model_repository_index().models}

    spare_tokens(BURST)
    with grpc.insecure_channel(f"127.0.0.1:{limited.grpc_port}") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        try:
            wait_for(SERVING, 30)
            assert set(states().values()) == {"READY"}
            os.kill(runner.pid, signal.SIGSTOP)
            try:
                wait_for(NOT_SERVING, 15)
                served = check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), timeout=10)
                assert served.status == NOT_SERVING
                assert states() == {
                    "fraud_ensemble": "UNAVAILABLE",
                    "fraud_hgb": "UNAVAILABLE",
                    "fraud_logreg": "READY",
                    "fraud_iforest": "READY",
                }
            finally:
                os.kill(runner.pid, signal.SIGCONT)
            wait_for(SERVING, 60)
        finally:
            client.close()
