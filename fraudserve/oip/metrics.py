"""Prometheus metrics of the OIP gRPC server, on the same /metrics as everything else.

``bentoml.metrics`` (not prometheus_client) so every API worker's values are aggregated.
"""

from __future__ import annotations

import bentoml

from fraudserve.metrics import labelled

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

GRPC_REQUESTS = bentoml.metrics.Counter(
    name="fraud_grpc_requests",
    documentation="OIP gRPC requests by method and status code (each message of a stream counts once).",
    labelnames=["method", "code"],
)
GRPC_LATENCY = bentoml.metrics.Histogram(
    name="fraud_grpc_request_duration_seconds",
    documentation="Server-side time of one OIP gRPC request, by method and status code.",
    labelnames=["method", "code"],
    buckets=_LATENCY_BUCKETS,
)


def observe(method: str, code: str, seconds: float) -> None:
    labelled(GRPC_REQUESTS, method, code).inc()
    labelled(GRPC_LATENCY, method, code).observe(seconds)
