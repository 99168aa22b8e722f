"""One error hierarchy. Each boundary maps it in exactly one table (HTTP, gRPC, dead letter)."""

from __future__ import annotations

from http import HTTPStatus


class FraudServeError(Exception):
    """Base of every error the bundle raises on purpose."""

    http_status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR
    grpc_code: str = "INTERNAL"
    reason: str = "internal"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, str]:
        body = {"error": self.reason, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class InvalidInput(FraudServeError):
    """The request is malformed: a missing field, a wrong type, an out-of-range value."""

    http_status = HTTPStatus.BAD_REQUEST
    grpc_code = "INVALID_ARGUMENT"
    reason = "invalid_input"


class PayloadTooLarge(FraudServeError):
    http_status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    grpc_code = "RESOURCE_EXHAUSTED"
    reason = "payload_too_large"


class NotFound(FraudServeError):
    """An unknown model or version."""

    http_status = HTTPStatus.NOT_FOUND
    grpc_code = "NOT_FOUND"
    reason = "not_found"


class Conflict(FraudServeError):
    """A change refused against the current state: it lost a concurrent write, or a version it names cannot score."""

    http_status = HTTPStatus.CONFLICT
    grpc_code = "ABORTED"
    reason = "conflict"


class Unavailable(FraudServeError):
    """Overloaded, shedding load, or a runner is down: the caller may retry."""

    http_status = HTTPStatus.SERVICE_UNAVAILABLE
    grpc_code = "UNAVAILABLE"
    reason = "unavailable"


class ModelStoreError(FraudServeError):
    """A model is missing from the store, or its artifact fails its integrity check."""

    reason = "model_store"


# hardening: authentication, rate limits, request deadlines (fraudserve/security)
class Unauthorized(FraudServeError):
    """No API key, or an unknown one, on a route that needs one."""

    http_status = HTTPStatus.UNAUTHORIZED
    grpc_code = "UNAUTHENTICATED"
    reason = "unauthorized"


class Forbidden(FraudServeError):
    """A valid key without the right for this route, or a route disabled by configuration."""

    http_status = HTTPStatus.FORBIDDEN
    grpc_code = "PERMISSION_DENIED"
    reason = "forbidden"


class RateLimited(FraudServeError):
    """The client spent its request budget; ``retry_after_s`` says when a token is back."""

    http_status = HTTPStatus.TOO_MANY_REQUESTS
    grpc_code = "RESOURCE_EXHAUSTED"
    reason = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.retry_after_s = retry_after_s


class RequestTimeout(FraudServeError):
    """The request did not finish within its deadline; the caller may retry."""

    http_status = HTTPStatus.GATEWAY_TIMEOUT
    grpc_code = "DEADLINE_EXCEEDED"
    reason = "timeout"


# edge export (fraud-edge)
class ExportError(FraudServeError):
    """A model cannot be exported faithfully (unsupported estimator, or parity outside tolerance)."""

    reason = "export"


# streaming worker (fraud-stream)
class PoisonMessage(FraudServeError):
    """A stream message delivered more often than allowed (it keeps killing or stalling its consumers)."""

    grpc_code = "ABORTED"
    reason = "max_deliveries"
