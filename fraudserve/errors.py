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


class Unavailable(FraudServeError):
    """Overloaded, shedding load, or a runner is down: the caller may retry."""

    http_status = HTTPStatus.SERVICE_UNAVAILABLE
    grpc_code = "UNAVAILABLE"
    reason = "unavailable"


class ModelStoreError(FraudServeError):
    """A model is missing from the store, or its artifact fails its integrity check."""

    reason = "model_store"
