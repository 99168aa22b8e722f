"""Small pure-ASGI helpers shared by the security middleware: read a header, answer an error."""

from __future__ import annotations

import json
import math

from starlette.types import Scope, Send

from fraudserve.errors import FraudServeError, RateLimited, Unauthorized, Unavailable

PRINCIPAL_SCOPE_KEY = "fraudserve.principal"
_RETRY_AFTER_S = 1.0


def retry_after_header(wait_s: float) -> str:
    return str(max(1, math.ceil(wait_s)))


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def is_http(scope: Scope) -> bool:
    return bool(scope["type"] == "http")


def client_address(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


async def send_error(send: Send, exc: FraudServeError) -> None:
    """Answer ``exc`` with its status and ``to_dict`` body (the shape every boundary uses)."""
    body = json.dumps(exc.to_dict()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if isinstance(exc, RateLimited):
        headers.append((b"retry-after", retry_after_header(exc.retry_after_s).encode()))
    elif isinstance(exc, Unavailable):
        headers.append((b"retry-after", retry_after_header(_RETRY_AFTER_S).encode()))
    elif isinstance(exc, Unauthorized):
        headers.append((b"www-authenticate", b'Bearer realm="fraudserve"'))
    await send({"type": "http.response.start", "status": int(exc.http_status), "headers": headers})
    await send({"type": "http.response.body", "body": body})
