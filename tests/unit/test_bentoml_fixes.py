"""BentoML's request timeout, as fixed by fraudserve.bentoml_fixes: no timer outlives its request, 504 still works."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from bentoml._internal.server.http.traffic import TimeoutMiddleware
from starlette.types import Receive, Scope, Send

from fraudserve import bentoml_fixes

SCOPE: dict[str, Any] = {"type": "http", "method": "POST", "path": "/predict", "headers": []}


async def quick_app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def slow_app(scope: Scope, receive: Receive, send: Send) -> None:
    await asyncio.sleep(30)


async def failing_app(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("broken before answering")


async def nothing() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def live_timers(loop: asyncio.AbstractEventLoop) -> int:
    """Timers still scheduled on ``loop`` for BentoML's timeout callback."""
    return sum(
        1
        for handle in loop._scheduled  # type: ignore[attr-defined]
        if not handle.cancelled() and getattr(handle._callback, "__name__", "") == "_set_timer_out"
    )


async def serve(app: Any, requests: int, timeout: float) -> tuple[list[int], int]:
    middleware = TimeoutMiddleware(app, timeout=timeout)
    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    for _ in range(requests):
        await middleware(dict(SCOPE), nothing, send)
    return statuses, live_timers(asyncio.get_running_loop())


def test_bentomls_own_middleware_keeps_a_timer_per_finished_request() -> None:
    """Why the fix exists (fails once BentoML cancels its timer: then drop fraudserve/bentoml_fixes.py)."""
    original = bentoml_fixes.ORIGINAL_CALL
    middleware_call = TimeoutMiddleware.__call__
    TimeoutMiddleware.__call__ = original  # type: ignore[method-assign]
    try:
        statuses, timers = asyncio.run(serve(quick_app, 200, timeout=60))
    finally:
        TimeoutMiddleware.__call__ = middleware_call  # type: ignore[method-assign]
    assert statuses == [200] * 200
    assert timers == 200


def test_the_fixed_middleware_cancels_the_timer_of_each_finished_request() -> None:
    bentoml_fixes.apply()
    statuses, timers = asyncio.run(serve(quick_app, 200, timeout=60))
    gc.collect()
    assert statuses == [200] * 200
    assert timers == 0


def test_the_fixed_middleware_still_answers_504_past_the_timeout() -> None:
    bentoml_fixes.apply()
    statuses, timers = asyncio.run(serve(slow_app, 2, timeout=0.05))
    assert statuses == [504, 504]
    assert timers == 0


def test_an_app_failing_before_it_answers_fails_at_once_not_at_the_timeout() -> None:
    bentoml_fixes.apply()

    async def scenario() -> None:
        async with asyncio.timeout(5):  # the middleware's own timeout is 60 s
            await serve(failing_app, 1, timeout=60)

    with pytest.raises(RuntimeError, match="broken before answering"):
        asyncio.run(scenario())


def test_freeze_heap_moves_what_start_up_loaded_out_of_the_collectors_reach() -> None:
    import gc

    from fraudserve.service_options import freeze_heap

    loaded = [[i] for i in range(1000)]  # as a start-up's modules and models
    try:
        freeze_heap()
        assert gc.get_freeze_count() >= len(loaded)
        collected_over = {id(o) for o in gc.get_objects(generation=2)}
        assert not any(id(x) in collected_over for x in loaded)
    finally:
        gc.unfreeze()
