"""The one settings class. Read once at start-up (``get_settings``), never per request."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the bundle. Environment variables use the ``FRAUD_`` prefix."""

    model_config = SettingsConfigDict(env_prefix="FRAUD_", extra="ignore")

    model_version: str = Field(
        "stable",
        description=(
            "Version shared by the ensemble and its member models in the BentoML store, or `latest`, or a"
            " registry alias (`stable`: falls back to the newest ensemble while the registry has no `stable`)."
        ),
    )
    model_prefix: str = Field("fraud", description="Name prefix of the models in the store.")
    batching_enabled: bool = Field(True, description="Adaptive micro-batching in the runners.")
    max_batch_size_rows: int = Field(512, ge=1, description="Largest batch a runner scores at once.")
    max_latency_ms: int = Field(
        10_000,
        ge=1,
        description=(
            "Latency budget of a batched runner call. BentoML sheds (503) requests that would"
            " exceed it, so this is a deadline, not a batching window."
        ),
    )
    bulk_rows_threshold: int = Field(
        64,
        ge=1,
        description="Requests with more rows than this skip the batcher and use the bulk path.",
    )
    entry_batching_enabled: bool = Field(
        True,
        description=(
            "Coalesce the rows of concurrent requests in each API worker into one call per member runner"
            " (all transports); off: one runner call per request."
        ),
    )
    entry_max_batch_rows: int = Field(
        256, ge=1, description="Most rows of one entry-worker batch; at least FRAUD_BULK_ROWS_THRESHOLD."
    )
    entry_max_queued_rows: int = Field(
        4096,
        ge=1,
        description="Rows waiting for a batch in one API worker; past it requests are refused at once (503).",
    )
    entry_max_inflight_batches: int = Field(
        1, ge=1, description="Entry-worker batches in flight to the runners at once, per API worker."
    )
    member_placement: Literal["inprocess", "runners"] = Field(
        "inprocess",
        description=(
            "Where the entry batches (requests of up to FRAUD_BULK_ROWS_THRESHOLD rows) are scored: `inprocess`, by"
            " the member models loaded in each API worker (no hop: a batch costs less than one runner call), or"
            " `runners`, one call per member runner service. Bulk requests always go to the runners."
        ),
    )
    max_rows_per_request: int = Field(10_000, ge=1, description="Row cap of one request.")
    decision_threshold: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="Fraud decision threshold; default is the one chosen at training time.",
    )
    runner_timeout_s: float = Field(
        60.0, gt=0, description="Timeout of one bulk (unbatched) runner call, and of the entry service's requests."
    )
    runner_call_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Timeout of one batched runner call; past it the caller gets a 503 (e.g. while a runner respawns).",
    )
    accept_balancing: bool = Field(
        True,
        description=(
            "Each API worker accepts REST connections on a blocking thread, so the kernel hands them to the workers"
            " in turn (off: every worker's event loop races for them, and a burst can land on one worker)."
        ),
    )
    access_log_enabled: bool = Field(
        False,
        description=(
            "BentoML's access log line per request of the entry service and the runners (off: it cost ~15 % of"
            " the single-row throughput; fraud_* and bentoml_* metrics count every request anyway)."
        ),
    )
    api_workers: int = Field(
        2, ge=1, description="Worker processes of the entry service (2 measured best on 2 cores: README, benchmarks)."
    )
    runner_workers: int = Field(1, ge=1, description="Worker processes of each model runner.")
    runner_threads: int = Field(
        1,
        ge=1,
        description=(
            "BLAS/OpenMP threads, and onnxruntime intra-op threads, per runner process (several runners share the"
            " cores)."
        ),
    )
    member_runtime: Literal["onnx", "sklearn"] = Field(
        "onnx",
        description=(
            "Runtime of the member models in the runners and the in-process scorer (batch, stream): `onnx` (the"
            " graph stored with each member at training, parity-checked) or `sklearn`. A member without a usable"
            " ONNX graph is served with scikit-learn, logged once at WARNING with the reason."
        ),
    )
    liveness_grace_s: float = Field(
        120.0,
        ge=0,
        description=(
            "/livez answers 503 once the runners have failed readiness this long, so an orchestrator restarts"
            " the service; 0: /livez never fails."
        ),
    )
    ready_probe_timeout_s: float = Field(
        5.0,
        gt=0,
        description="Deadline of the readiness probe of each runner (/readyz, OIP readiness, grpc.health.v1).",
    )
    ready_cache_s: float = Field(
        1.0,
        ge=0,
        description=(
            "How long a worker reuses one readiness probe (a scoring call on every runner) for all readiness"
            " endpoints; concurrent probes share one call."
        ),
    )
    grpc_port: int = Field(8001, ge=0, le=65535, description="Port of the OIP gRPC server.")
    grpc_enabled: bool = Field(True, description="Start the OIP gRPC server in each API worker.")
    # Open Inference Protocol gRPC server (fraudserve/oip)
    grpc_host: str = Field("0.0.0.0", description="Address the OIP gRPC server binds.")
    grpc_max_message_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest gRPC message the OIP server sends or receives."
    )
    grpc_stream_max_inflight: int = Field(
        64,
        ge=1,
        description=(
            "Messages of one ModelStreamInfer stream read but not yet answered; past it the server stops reading"
            " the stream (backpressure)."
        ),
    )
    grpc_shutdown_grace_s: float = Field(5.0, ge=0, description="Time in-flight gRPC calls get to finish on shutdown.")

    # streaming worker (fraud-stream, issue 5)
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis of the streaming worker.")
    stream_input: str = Field("fraud:transactions", description="Stream the worker reads transactions from.")
    stream_output: str = Field("fraud:scores", description="Stream every score is written to.")
    stream_alerts: str = Field("fraud:alerts", description="Stream of the scores at or above the threshold.")
    stream_dead_letter: str = Field(
        "fraud:dead-letter", description="Stream of the messages that cannot be scored, with the reason."
    )
    stream_group: str = Field("fraud-scorers", description="Consumer group of the streaming workers.")
    # 1024, not 256: the per-batch costs (script call, scoring call) then cost a worker ~25 % less CPU per message
    # from a backlog (measured); at a steady rate a read returns only what has arrived, so latency is unchanged.
    stream_batch_size: int = Field(1024, ge=1, le=10_000, description="Messages read (COUNT) and scored at once.")
    stream_block_ms: int = Field(
        1_000, ge=1, description="Longest wait for new messages; also bounds how fast a worker notices SIGTERM."
    )
    stream_claim_idle_ms: int = Field(
        30_000,
        ge=1,
        description="Messages pending this long with another consumer (presumed dead) are reclaimed (XAUTOCLAIM).",
    )
    stream_claim_interval_ms: int = Field(5_000, ge=1, description="How often a worker looks for such messages.")
    stream_max_deliveries: int = Field(
        5, ge=1, description="A message delivered more often than this goes to the dead-letter stream unscored."
    )
    stream_maxlen: int = Field(
        1_000_000, ge=0, description="Approximate cap (MAXLEN ~) of the output, alert and dead-letter streams; 0: none."
    )
    stream_metrics_port: int = Field(
        9400, ge=0, le=65535, description="Port of a worker's Prometheus /metrics; 0 turns it off."
    )
    stream_fault_hold_dir: Path | None = Field(
        None,
        description=(
            "Test only (fault injection), never set in production: a worker writes the ids of the first batch it"
            " scores to `<dir>/<consumer>.held`, then waits before committing it until `<dir>/<consumer>.release`"
            " exists (or it is asked to stop)."
        ),
    )
    stream_broker: Literal["redis", "kafka"] = Field(
        "redis", description="Broker of `fraud-stream` (worker, produce, stats): `redis` or `kafka`."
    )
    # Kafka as a stream source (fraudserve/stream/kafka_broker.py, issue 15). Kafka topic names cannot hold
    # the ":" of the Redis stream names, hence topics of their own; the group is FRAUD_STREAM_GROUP.
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers (HOST:PORT, comma-separated).")
    kafka_input_topic: str = Field("fraud.transactions", description="Topic the Kafka worker reads transactions from.")
    kafka_output_topic: str = Field("fraud.scores", description="Topic every score is written to (Kafka).")
    kafka_alerts_topic: str = Field(
        "fraud.alerts", description="Topic of the scores at or above the threshold (Kafka)."
    )
    kafka_dead_letter_topic: str = Field(
        "fraud.dead-letter", description="Topic of the messages that cannot be scored, with the reason (Kafka)."
    )
    kafka_partitions: int = Field(
        3, ge=1, description="Partitions of the topics the Kafka worker or producer creates when they are missing."
    )
    kafka_session_timeout_ms: int = Field(
        10_000,
        ge=1_000,
        description="A Kafka consumer silent this long is presumed dead; its partitions go to the others.",
    )
    kafka_fault_hold_before_commit_s: float = Field(
        0.0,
        ge=0,
        description=(
            "Tests only: the Kafka worker sleeps this long after producing a batch's outputs and before committing"
            " its offsets, so a kill lands mid-batch. 0: off."
        ),
    )
    # hardening: API keys, rate limits, request limits (fraudserve/security)
    api_keys: SecretStr = Field(
        SecretStr(""),
        description=(
            "Bearer keys for the predict routes (/predict, /model, /v2/* and OIP gRPC): comma-separated or a JSON"
            " list. Empty: those routes are open."
        ),
    )
    admin_api_keys: SecretStr = Field(
        SecretStr(""),
        description="Bearer keys for /admin/* (they open the predict routes too). Empty: admin routes answer 403.",
    )
    dev_mode: bool = Field(False, description="Development: admin routes are open when no admin key is set.")
    rate_limit_rps: float = Field(0.0, ge=0, description="Sustained requests/s per client (API key, else IP); 0: off.")
    rate_limit_burst: int = Field(50, ge=1, description="Requests a client may send at once above the sustained rate.")
    max_request_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest request body; larger ones get 413 before they are read."
    )
    max_inflight_requests: int = Field(
        256, ge=1, description="Requests one API worker serves at once; more are shed at once with 503 + Retry-After."
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="Deadline of one request in the API worker; later ones are answered 504."
    )
    # staged rollout: traffic policies, shadow, response cache (fraudserve/rollout, issue 8)
    policy_file: Path | None = Field(
        None, description="Traffic policy (JSON or YAML, fields of fraudserve.rollout.policy.Policy) applied at start."
    )
    policy_state_file: Path | None = Field(
        None,
        description="Where the current and previous policy are shared by all workers; default: in $BENTOML_HOME.",
    )
    policy_refresh_s: float = Field(
        1.0, ge=0, description="How often a worker checks the shared policy file for changes (mtime)."
    )
    shadow_timeout_s: float = Field(2.0, gt=0, description="Deadline of a shadow scoring call; later ones are dropped.")
    shadow_max_inflight: int = Field(
        64, ge=1, description="Shadow calls one worker runs at once; more are skipped (counted as `skipped`)."
    )
    cache_enabled: bool = Field(
        False, description="Response cache of member scores keyed by model version + input row."
    )
    cache_backend: Literal["memory", "redis"] = Field(
        "memory",
        description=(
            "`memory`: an in-process LRU per API worker; `redis`: that LRU in front of a Redis shared by all workers"
            " and replicas (an L2 hit fills the LRU)."
        ),
    )
    cache_max_entries: int = Field(100_000, ge=1, description="Rows the in-process LRU holds per worker.")
    cache_ttl_s: float = Field(
        300.0,
        gt=0,
        description="Age after which a cached row is scored again (counted from its write, in both levels).",
    )
    cache_redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis of the `redis` cache backend (it may be the streaming worker's, FRAUD_REDIS_URL).",
    )
    cache_redis_timeout_ms: float = Field(
        50.0,
        gt=0,
        description="Connect and socket timeout of one Redis cache round trip; past it the rows are misses.",
    )
    cache_redis_backoff_s: float = Field(
        1.0, ge=0, description="After a Redis cache error the worker skips Redis (all misses) for this long."
    )
    cache_redis_key_prefix: str = Field(
        "fraud:cache", min_length=1, description="Namespace of the response cache's keys in Redis."
    )
    # traces (fraudserve/tracing.py)
    otlp_endpoint: str | None = Field(
        None,
        description=(
            "OTLP/gRPC collector (host:port, e.g. a Jaeger or OpenTelemetry Collector) that every service, fraud-batch"
            " and fraud-stream export traces to; unset: no traces."
        ),
    )
    trace_sample_rate: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Share of traces kept when FRAUD_OTLP_ENDPOINT is set (a caller's sampled flag wins).",
    )
    routing_key_max_chars: int = Field(
        256, ge=1, description="Longest `routing_key` a /predict or OIP infer request may carry."
    )

    @model_validator(mode="after")
    def _entry_batch_holds_a_batched_request(self) -> Settings:
        if self.entry_max_batch_rows < self.bulk_rows_threshold:
            raise ValueError("FRAUD_ENTRY_MAX_BATCH_ROWS must be at least FRAUD_BULK_ROWS_THRESHOLD")
        if self.entry_max_queued_rows < self.entry_max_batch_rows:
            raise ValueError("FRAUD_ENTRY_MAX_QUEUED_ROWS must be at least FRAUD_ENTRY_MAX_BATCH_ROWS")
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def markdown_table() -> str:
    """The settings as the README's table (`python -m fraudserve.settings`)."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        lines.append(f"| `FRAUD_{name.upper()}` | `{field.default}` | {field.description or ''} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
