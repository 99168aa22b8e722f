"""The OIP boundaries' one mapping each: our errors -> HTTP status / gRPC status code.

Built on ``FraudServeError.http_status`` / ``.grpc_code``. Anything else is logged with its
traceback and answered 500 / INTERNAL without internals; nothing is ever UNKNOWN.
"""

from __future__ import annotations

import logging

import grpc

from fraudserve.errors import FraudServeError
from fraudserve.metrics import ERRORS

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal server error"


def message(exc: FraudServeError) -> str:
    """The client-facing text: the field first, so every client shows which input was wrong."""
    return f"{exc.field}: {exc.message}" if exc.field else exc.message


def http_error(exc: BaseException, *, transport: str) -> tuple[int, str]:
    """(status, message) of an error at the OIP REST boundary."""
    if isinstance(exc, FraudServeError):
        ERRORS.labels(transport=transport, reason=exc.reason).inc()
        return int(exc.http_status), message(exc)
    log.error("unhandled error on %s", transport, exc_info=exc)
    ERRORS.labels(transport=transport, reason="internal").inc()
    return 500, INTERNAL_MESSAGE


def grpc_error(exc: BaseException, *, transport: str) -> tuple[grpc.StatusCode, str]:
    """(code, details) of an error at the OIP gRPC boundary."""
    if isinstance(exc, FraudServeError):
        ERRORS.labels(transport=transport, reason=exc.reason).inc()
        return grpc.StatusCode[exc.grpc_code], message(exc)
    log.error("unhandled error on %s", transport, exc_info=exc)
    ERRORS.labels(transport=transport, reason="internal").inc()
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
