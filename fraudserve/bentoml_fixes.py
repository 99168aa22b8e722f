"""A fix to BentoML 1.4.39 applied in every service process: its request timeout never cancels its timer.

``bentoml._internal.server.http.traffic.TimeoutMiddleware`` (on every service, as ``traffic.timeout``
cannot be turned off) schedules ``loop.call_later(timeout, ...)`` per request and never cancels it.
Each finished request therefore stays reachable for ``timeout`` seconds (60 s here) through the
timer: its future, its contextvars and its OpenTelemetry span, ~20 objects. At 500 requests/s per
worker that is 30,000 requests held, and every full garbage collection walked them: 60-180 ms pauses
every few seconds, which were the p99 of the online path (seen with ``gc.callbacks``; p99 at 8
connections went from ~150 ms to the 20s of ms with this fix).

``apply()`` replaces the middleware's ``__call__`` with the same logic plus the cancel (and an app that
fails before answering is reported at once instead of as a 504 after the timeout).
"""

from __future__ import annotations

import asyncio
from typing import Any

from bentoml._internal.server.http.traffic import TimeoutMiddleware
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

ORIGINAL_CALL = TimeoutMiddleware.__call__


async def _call(self: TimeoutMiddleware, scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] not in ("http", "websocket"):
        await self.app(scope, receive, send)
        return
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[Any] = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def _send(message: Any) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    def _finished(_: asyncio.Future[None]) -> None:
        # An app that fails before answering wakes the waiter too: its error surfaces now, not as a 504 later.
        if not waiter.done():
            waiter.set_result(None)

    fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
    fut.add_done_callback(_finished)
    try:
        await waiter
    except TimeoutError:
        if fut.cancel():
            resp = JSONResponse(
                {"error": f"Not able to process the request in {self.timeout} seconds"}, status_code=504
            )
            await resp(scope, receive, send)
    else:
        await fut
    finally:
        timer.cancel()


def apply() -> None:
    """Idempotent: patch BentoML's TimeoutMiddleware in this process."""
    TimeoutMiddleware.__call__ = _call  # type: ignore[method-assign]
