"""The HTTP boundary's one mapping of errors to responses."""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse

from fraudserve.errors import FraudServeError, Unavailable

log = logging.getLogger(__name__)

_RETRY_AFTER_S = "1"


def error_response(exc: Exception) -> JSONResponse:
    """Our errors keep their status and message; anything else is a logged, opaque 500."""
    if isinstance(exc, FraudServeError):
        headers = {"Retry-After": _RETRY_AFTER_S} if isinstance(exc, Unavailable) else None
        return JSONResponse(exc.to_dict(), status_code=int(exc.http_status), headers=headers)
    log.error("unhandled error", exc_info=exc)
    return JSONResponse({"error": "internal", "message": "internal server error"}, status_code=500)
