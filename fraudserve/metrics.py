"""Prometheus metrics of the bundle, exported on /metrics beside BentoML's own.

``bentoml.metrics`` is used (not prometheus_client directly) so that values from every
worker and runner process are aggregated by BentoML's multiprocess collector.
"""

from __future__ import annotations

from typing import Any

import bentoml

_CHILDREN: dict[tuple[int, tuple[str, ...]], Any] = {}


def labelled(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)`` (values in ``labelnames`` order), kept: on the hot path the lookup cost twice
    the observation (~2 us), a dozen times per request. Only for metrics whose children are never removed."""
    key = (id(metric), values)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*values)
    return child


_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

RUNNER_BATCH_ROWS = bentoml.metrics.Histogram(
    name="fraud_runner_batch_rows",
    documentation="Rows scored by one runner call (a batch merged from several requests when batched).",
    labelnames=["model", "path", "runtime"],
    buckets=_ROW_BUCKETS,
)
RUNNER_LATENCY = bentoml.metrics.Histogram(
    name="fraud_model_latency_seconds",
    documentation="Time a runner spends in its model for one call.",
    labelnames=["model", "path", "runtime"],
    buckets=_LATENCY_BUCKETS,
)
REQUEST_ROWS = bentoml.metrics.Histogram(
    name="fraud_request_rows",
    documentation="Transactions per scoring request, by transport.",
    labelnames=["transport"],
    buckets=_ROW_BUCKETS,
)
PREDICTIONS = bentoml.metrics.Counter(
    name="fraud_predictions",
    documentation="Scored transactions by decision.",
    labelnames=["decision"],
)
ERRORS = bentoml.metrics.Counter(
    name="fraud_errors",
    documentation="Requests that failed, by transport and reason.",
    labelnames=["transport", "reason"],
)
ENTRY_BATCH_ROWS = bentoml.metrics.Histogram(
    name="fraud_entry_batch_rows",
    documentation="Rows of one entry-worker batch (one runner call), merged from concurrent requests.",
    labelnames=["model"],
    buckets=_ROW_BUCKETS,
)
ENTRY_BATCH_REQUESTS = bentoml.metrics.Histogram(
    name="fraud_entry_batch_requests",
    documentation="Requests merged into one entry-worker batch (one runner call).",
    labelnames=["model"],
    buckets=_ROW_BUCKETS,
)
ENTRY_QUEUE_REJECTED = bentoml.metrics.Counter(
    name="fraud_entry_queue_rejected",
    documentation="Requests refused (503 / UNAVAILABLE) because the entry worker's batch queue was full.",
)
