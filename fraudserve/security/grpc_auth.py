"""The same keys and rate limits for gRPC: a ``grpc.aio`` server interceptor.

    grpc.aio.server(interceptors=[GuardInterceptor(get_guards())], ...)

A key travels as ``authorization: Bearer <key>`` metadata (tritonclient: ``headers=``).
Unknown or missing keys end the call UNAUTHENTICATED, a key without the right
PERMISSION_DENIED, an empty bucket RESOURCE_EXHAUSTED (with ``retry-after`` trailing metadata).
Health, reflection and the OIP liveness/readiness RPCs stay open like their REST twins.

A request stream costs a token to open and then one per message: the handler calls
``check_message()`` for each message it reads (it answers a refused one in its own way, e.g. an
error response in a stream that goes on), so a stream gets no more than as many unary calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import grpc

from fraudserve.errors import FraudServeError, RateLimited
from fraudserve.security import Guards
from fraudserve.security.asgi import retry_after_header
from fraudserve.security.auth import Access, Principal
from fraudserve.security.ratelimit import TokenBucketLimiter, client_id

OPEN_METHODS = frozenset(
    {
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ServerReady",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    }
)


# The limiter and client of the request-streaming call running in this task (and its children).
_STREAM_BUDGET: ContextVar[tuple[TokenBucketLimiter, str] | None] = ContextVar("grpc_stream_budget", default=None)


def check_message() -> None:
    """Spend one token for one message of the current request stream; ``RateLimited`` when none is left.

    A no-op outside a rate-limited request-streaming call.
    """
    budget = _STREAM_BUDGET.get()
    if budget is not None:
        limiter, client = budget
        limiter.check(client)


def peer_address(peer: str) -> str:
    """``ipv4:127.0.0.1:5000`` / ``ipv6:[::1]:5000`` -> the address without the port."""
    _, _, rest = peer.partition(":")
    host = rest.rsplit(":", 1)[0] if rest.count(":") >= 1 else rest
    return host.strip("[]") or peer


class GuardInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, guards: Guards, *, open_methods: frozenset[str] = OPEN_METHODS) -> None:
        self.guards = guards
        self.open_methods = open_methods

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method in self.open_methods:
            return handler
        metadata = {key.lower(): value for key, value in (details.invocation_metadata or ())}
        authorization = metadata.get("authorization")
        try:
            principal = self.guards.keys.authorize(Access.PREDICT, str(authorization) if authorization else None)
        except FraudServeError as exc:
            return _refusing(handler, exc)
        if self.guards.limiter is None:
            return handler
        return _limited(handler, self.guards, principal)


async def _abort(context: grpc.aio.ServicerContext, exc: FraudServeError) -> None:
    if isinstance(exc, RateLimited):
        context.set_trailing_metadata((("retry-after", retry_after_header(exc.retry_after_s)),))
    await context.abort(grpc.StatusCode[exc.grpc_code], exc.message)


def _refusing(handler: grpc.RpcMethodHandler, exc: FraudServeError) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that ends every call with ``exc``."""
    if handler.response_streaming:

        async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await _abort(context, exc)
            yield  # unreachable: makes this an async generator like the handler it stands for

        return _replace(handler, refuse_stream)

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await _abort(context, exc)

    return _replace(handler, refuse)


def _limited(handler: grpc.RpcMethodHandler, guards: Guards, principal: Principal | None) -> grpc.RpcMethodHandler:
    """``handler`` behind a token check; the peer address is only known inside the call."""
    assert guards.limiter is not None
    limiter = guards.limiter
    behavior = _behavior(handler)

    def check(context: grpc.aio.ServicerContext) -> RateLimited | None:
        client = client_id(principal, peer_address(context.peer()))
        if handler.request_streaming:
            _STREAM_BUDGET.set((limiter, client))
        try:
            limiter.check(client)
        except RateLimited as exc:
            return exc
        return None

    if handler.response_streaming:

        async def limited_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if (exc := check(context)) is not None:
                await _abort(context, exc)
            async for reply in behavior(request, context):
                yield reply

        return _replace(handler, limited_stream)

    async def limited(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if (exc := check(context)) is not None:
            await _abort(context, exc)
        return await behavior(request, context)

    return _replace(handler, limited)


def _kind(handler: grpc.RpcMethodHandler) -> str:
    streaming_in = "stream" if handler.request_streaming else "unary"
    streaming_out = "stream" if handler.response_streaming else "unary"
    return f"{streaming_in}_{streaming_out}"


def _behavior(handler: grpc.RpcMethodHandler) -> Any:
    return getattr(handler, _kind(handler))


def _replace(handler: grpc.RpcMethodHandler, behavior: Any) -> grpc.RpcMethodHandler:
    return handler._replace(**{_kind(handler): behavior})
