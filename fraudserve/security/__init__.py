"""Hardening of the transports: API keys, rate limits, body/in-flight/time limits.

One ``Guards`` per API worker holds the key store and the rate limiter, so REST (ASGI
middleware) and OIP gRPC (a server interceptor) apply the same keys and share each client's
budget. ``middleware(settings)`` lists the ASGI middleware in order, outermost first:

    auth (401/403) -> rate limit (429) -> in-flight cap (503) -> body size (413) -> deadline (504)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fraudserve.security.auth import AuthMiddleware, KeyStore
from fraudserve.security.limits import BodySizeLimitMiddleware, DeadlineMiddleware, InflightLimitMiddleware
from fraudserve.security.ratelimit import RateLimitMiddleware, TokenBucketLimiter
from fraudserve.settings import Settings, get_settings


@dataclass(frozen=True)
class Guards:
    keys: KeyStore
    limiter: TokenBucketLimiter | None

    @classmethod
    def from_settings(cls, settings: Settings) -> Guards:
        limiter = None
        if settings.rate_limit_rps > 0:
            limiter = TokenBucketLimiter(settings.rate_limit_rps, settings.rate_limit_burst)
        return cls(keys=KeyStore.from_settings(settings), limiter=limiter)


@lru_cache(maxsize=1)
def get_guards() -> Guards:
    """The worker's guards, built once; raises ``SecurityConfigError`` on bad keys (start-up fails)."""
    return Guards.from_settings(get_settings())


def middleware(settings: Settings, guards: Guards) -> list[tuple[type, dict[str, Any]]]:
    """``(class, options)`` pairs for ``Service.add_asgi_middleware``, outermost first."""
    stack: list[tuple[type, dict[str, Any]]] = [(AuthMiddleware, {"keys": guards.keys})]
    if guards.limiter is not None:
        stack.append((RateLimitMiddleware, {"limiter": guards.limiter}))
    stack += [
        (InflightLimitMiddleware, {"max_inflight": settings.max_inflight_requests}),
        (BodySizeLimitMiddleware, {"max_body_bytes": settings.max_request_body_bytes}),
        (DeadlineMiddleware, {"timeout_s": settings.request_timeout_s}),
    ]
    return stack
