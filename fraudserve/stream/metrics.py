"""Prometheus metrics of a streaming worker, served by the worker itself (it runs outside BentoML).

They live in prometheus_client's default registry, beside the inference core's own metrics
(rows and decisions), so one ``/metrics`` shows both.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

MESSAGES = Counter(
    "fraud_stream_messages",
    "Messages finished by this worker: scored, dead_letter, or duplicate (already written by another consumer);"
    " retry: a scoring failure not caused by the message, left pending to be retried.",
    ["outcome"],
)
ALERTS = Counter("fraud_stream_alerts", "Scores at or above the threshold written to the alert stream.")
DEAD_LETTERS = Counter("fraud_stream_dead_letters", "Messages sent to the dead-letter stream, by reason.", ["reason"])
RECLAIMED = Counter("fraud_stream_reclaimed", "Messages taken over from a consumer that stopped acknowledging.")
TRIMMED = Counter(
    "fraud_stream_trimmed_unprocessed",
    "Pending messages found deleted from the input stream (trimmed by MAXLEN before they were scored).",
)
BATCH_SIZE = Histogram("fraud_stream_batch_size", "Messages per committed micro-batch.", buckets=_BATCH_BUCKETS)
BATCH_SECONDS = Histogram(
    "fraud_stream_batch_seconds", "Decode + score + write + ack of one micro-batch.", buckets=_LATENCY_BUCKETS
)
END_TO_END_SECONDS = Histogram(
    "fraud_stream_end_to_end_seconds",
    "Append of the input message -> its score committed (clocks of Redis and the worker).",
    buckets=_LATENCY_BUCKETS,
)
LAG = Gauge("fraud_stream_lag", "Input messages not yet delivered to the consumer group.")
PENDING = Gauge("fraud_stream_pending", "Messages delivered to the group but not yet acknowledged.")
THROUGHPUT = Gauge("fraud_stream_throughput_per_s", "Messages this worker finished per second, recent average.")
BROKER_ERRORS = Counter("fraud_stream_broker_errors", "Failed calls to the broker (the worker backs off and retries).")
KAFKA_PARTITION_LAG = Gauge(
    "fraud_stream_kafka_partition_lag",
    "Kafka: high watermark minus the group's committed offset, per input partition this worker owns.",
    ["topic", "partition"],
)
KAFKA_REBALANCES = Counter(
    "fraud_stream_kafka_rebalances", "Kafka: partitions assigned to or taken from this worker.", ["event"]
)
