"""Token-bucket rate limiting per client (its API key, else its IP address).

State lives in one API worker process: with N workers a client may reach N times the rate when
its connections spread over them. The bucket table is bounded (least recently seen clients are
forgotten, which only ever refills their bucket), so spoofed or many clients cannot grow memory.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from fraudserve.errors import RateLimited
from fraudserve.security.asgi import PRINCIPAL_SCOPE_KEY, client_address, is_http, send_error
from fraudserve.security.auth import Access, Principal, access_for

MAX_CLIENTS = 10_000


class TokenBucketLimiter:
    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)

    def acquire(self, client: str) -> float:
        """Take one token: 0.0 when allowed, else the seconds until one is available."""
        now = self._clock()
        tokens, at = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate_per_s)
        wait_s = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait_s = (1.0 - tokens) / self.rate_per_s
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait_s

    def check(self, client: str) -> None:
        wait_s = self.acquire(client)
        if wait_s > 0:
            raise RateLimited(
                f"rate limit of {self.rate_per_s:g} requests/s (burst {self.burst:g}) exceeded; retry later",
                retry_after_s=wait_s,
            )


def client_id(principal: Principal | None, address: str | None) -> str:
    """Keyed callers share a bucket per key wherever they connect from; others one per address."""
    if principal is not None:
        return f"key:{principal.key_id}"
    return f"ip:{address or 'unknown'}"


class RateLimitMiddleware:
    """429 + Retry-After once a client's bucket is empty; open routes (health, metrics) are not counted."""

    def __init__(self, app: ASGIApp, *, limiter: TokenBucketLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if is_http(scope) and access_for(scope["path"]) is not Access.OPEN:
            client = client_id(scope.get(PRINCIPAL_SCOPE_KEY), client_address(scope))
            try:
                self.limiter.check(client)
            except RateLimited as exc:
                await send_error(send, exc)
                return
        await self.app(scope, receive, send)
