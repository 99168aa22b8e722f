"""Request limits of one API worker: body size, requests in flight, and a deadline per request.

- Body size: a ``Content-Length`` above the limit is answered 413 before any byte is read; a
  body without one (chunked) is counted as it streams and cut off at the limit.
- In flight: a bounded counter, not a queue. When it is full the request is shed at once with
  503 + Retry-After, so overload costs the client one round trip instead of a growing wait.
- Deadline: a request still running after ``timeout_s`` is cancelled and answered 504.

Open routes (health, metrics, docs) bypass the in-flight cap and the deadline so that probes
keep answering while the worker is saturated.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fraudserve.errors import InvalidInput, PayloadTooLarge, RequestTimeout, Unavailable
from fraudserve.security.asgi import header, is_http, send_error
from fraudserve.security.auth import Access, access_for

log = logging.getLogger(__name__)


class _BodyTooLarge(Exception):
    pass


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body is larger than {self.max_body_bytes} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_http(scope):
            await self.app(scope, receive, send)
            return
        declared = header(scope, b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0:
                await send_error(send, InvalidInput("invalid Content-Length header", field="content-length"))
                return
            if length > self.max_body_bytes:
                await send_error(send, self._too_large())
                return
            # The server enforces a declared length, so the body cannot outgrow it.
            await self.app(scope, receive, send)
            return

        received = 0
        exceeded = False
        started = False

        async def counted_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # whatever the app answers to the cut-off body, the client gets our 413
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _BodyTooLarge:
            pass
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await send_error(send, self._too_large())


class InflightLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_inflight: int) -> None:
        self.app = app
        self.max_inflight = max_inflight
        self.inflight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_http(scope) or access_for(scope["path"]) is Access.OPEN:
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.max_inflight:
            await send_error(send, Unavailable(f"server is at capacity ({self.max_inflight} requests in flight)"))
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


class DeadlineMiddleware:
    def __init__(self, app: ASGIApp, *, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_http(scope) or access_for(scope["path"]) is Access.OPEN:
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            async with asyncio.timeout(self.timeout_s) as deadline:
                await self.app(scope, receive, tracked_send)
        except TimeoutError:
            if not deadline.expired():
                raise
            log.warning("request %s %s cancelled after %.1f s", scope.get("method"), scope["path"], self.timeout_s)
            if started:
                raise  # part of the answer is on the wire; the server closes the connection
            await send_error(send, RequestTimeout(f"request did not finish within {self.timeout_s:g} s; retry later"))
