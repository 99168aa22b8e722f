"""OpenTelemetry traces: BentoML's own tracing for HTTP, our spans where BentoML does not see the work.

With ``FRAUD_OTLP_ENDPOINT`` set, every service of the bundle exports over OTLP/gRPC through BentoML's tracing
configuration (``service_config``): BentoML opens a server span per HTTP request (honouring a W3C
``traceparent`` header) and propagates the current span to the runners it calls. Our own spans fill the gaps:

- ``oip.<Method>`` for the OIP gRPC server (BentoML does not trace it), under the caller's ``traceparent``
  from the gRPC metadata;
- ``entry_batch`` for one entry-worker batch (fraudserve/batcher.py): a child of the request that opened it,
  linked to every request whose rows it carries, and the parent of the runner calls;
- ``batch.chunk`` and ``stream.micro_batch`` in fraud-batch and fraud-stream, which run outside BentoML and
  get their own tracer provider from ``configure_cli``.

Unset, BentoML's provider samples nothing and our spans are not even opened: a non-recording span per batch
still cost ~5 % of an API worker's CPU under single-row load (py-spy).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Tracer

from fraudserve.settings import Settings, get_settings

_NAME = "fraudserve"
_cli_provider: Any = None
_tracer: Tracer | None = None
_exporting: bool | None = None


def exporting() -> bool:
    """Whether this process exports spans (FRAUD_OTLP_ENDPOINT set), read once."""
    global _exporting
    if _exporting is None:
        _exporting = bool(get_settings().otlp_endpoint)
    return _exporting


def service_config(settings: Settings) -> dict[str, Any]:
    """BentoML's ``tracing`` service option for the configured endpoint.

    Without one nothing is exported, yet BentoML's ASGI tracing middleware still opened three recording spans
    per request (the request, its response start and body), ~8 % of an API worker's CPU under single-row
    load (py-spy): every URL is excluded from it then.
    """
    if not settings.otlp_endpoint:
        return {"excluded_urls": [".*"]}
    return {
        "exporter_type": "otlp",
        "sample_rate": settings.trace_sample_rate,
        "otlp": {"protocol": "grpc", "endpoint": settings.otlp_endpoint, "grpc": {"insecure": True}},
    }


def tracer() -> Tracer:
    """The tracer of this process: BentoML's provider inside a served worker, else the CLI's (or a no-op)."""
    global _tracer
    if _tracer is None:
        _tracer = _cli_provider.get_tracer(_NAME) if _cli_provider is not None else _bentoml_tracer()
    return _tracer


def _bentoml_tracer() -> Tracer:
    try:
        from bentoml._internal.configuration.containers import BentoMLContainer

        return BentoMLContainer.tracer_provider.get().get_tracer(_NAME)  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001 - outside a BentoML worker: no tracing rather than no scoring
        return trace.NoOpTracer()


def configure_cli(settings: Settings, service_name: str) -> None:
    """Give a command-line process (fraud-batch, fraud-stream) an OTLP exporter when an endpoint is set."""
    global _cli_provider, _tracer, _exporting
    if not settings.otlp_endpoint or _cli_provider is not None:
        return
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio

    provider = TracerProvider(
        sampler=ParentBasedTraceIdRatio(settings.trace_sample_rate),
        resource=Resource.create({SERVICE_NAME: service_name}),
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint, insecure=True)))
    _cli_provider, _tracer, _exporting = provider, None, True


def shutdown_cli() -> None:
    """Flush the CLI's spans (the batch span processor exports in the background)."""
    if _cli_provider is not None:
        _cli_provider.shutdown()


def current_span_context() -> SpanContext:
    return trace.get_current_span().get_span_context()


@contextlib.contextmanager
def batch_span(name: str, requests: Sequence[SpanContext], **attributes: Any) -> Iterator[None]:
    """A span for work done on behalf of several requests, current while it runs.

    Its parent is the first request (so a request alone in its batch has one trace from entry to runners);
    it is linked to every request it serves.
    """
    if not exporting():
        yield
        return
    parent = trace.set_span_in_context(NonRecordingSpan(requests[0])) if requests else None
    links = [Link(c) for c in requests if c.is_valid]
    with tracer().start_as_current_span(name, context=parent, links=links, attributes=attributes):
        yield


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[None]:
    """A span of this process's tracer around one unit of work (a batch chunk, a stream micro-batch)."""
    if not exporting():
        yield
        return
    with tracer().start_as_current_span(name, attributes=attributes):
        yield


@contextlib.contextmanager
def grpc_server_span(method: str, metadata: Mapping[str, str] | None) -> Iterator[None]:
    """The server span of one OIP gRPC call, under the caller's ``traceparent`` (gRPC metadata) if any."""
    if not exporting():
        yield
        return
    parent = propagate.extract(dict(metadata or {}))
    with tracer().start_as_current_span(f"oip.{method}", context=parent, kind=SpanKind.SERVER):
        yield
