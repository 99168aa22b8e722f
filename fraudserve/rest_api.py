"""The bundle's REST routes (``/predict``, ``/model``, ``/admin/*``, ``/docs.json``) as one Starlette app.

service.py mounts it into the BentoML service, so BentoML's middleware (metrics, tracing, access log) and ours
(API keys, rate limit, in-flight cap, body size, deadline) wrap every route, while BentoML's API machinery
does not: under a profile of ``/predict`` as a ``@bentoml.api`` method, its per-row input models and response
rendering took more CPU than the models, and it answered its own validation errors in a shape of its own.
Here a body is parsed with orjson and validated once (``/predict``: the schema-compiled encoder of
fraudserve/encoder.py), every error of every route is ``fraudserve.http_errors.error_response``'s one shape,
and ``/docs.json`` (fraudserve/openapi.py) documents each route with its statuses.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fraudserve import openapi
from fraudserve.errors import InvalidInput
from fraudserve.http_errors import error_response
from fraudserve.inference import InferenceCore
from fraudserve.rollout import admin
from fraudserve.rollout.policy import Policy

TRANSPORT = "rest"
FIELD = "transactions"
_BODY_FIELDS = frozenset({FIELD, "routing_key"})

Action = Callable[[InferenceCore, Request], Awaitable[dict[str, Any]]]


def parse_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        # The stdlib parser accepts NaN/Infinity, so such a value is refused by validation naming its field;
        # anything else it refuses too, with a line and column.
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"the body is not valid JSON: {exc}", field="body") from None


def read_predict_body(raw: bytes, *, max_key_chars: int) -> tuple[list[Any], str | None]:
    """The body's transactions (a single object becomes a list of one) and its routing key."""
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise InvalidInput(f"the body must be a JSON object with {FIELD!r}", field="body")
    if not _BODY_FIELDS.issuperset(body):
        unknown = sorted(str(k) for k in body if k not in _BODY_FIELDS)
        raise InvalidInput(f"unknown field; expected {sorted(_BODY_FIELDS)}", field=unknown[0])
    transactions = body.get(FIELD)
    if isinstance(transactions, dict):
        transactions = [transactions]
    elif not isinstance(transactions, list):
        raise InvalidInput("required: one transaction object or a list of them", field=FIELD)
    key = body.get("routing_key")
    if key is not None and (not isinstance(key, str) or len(key) > max_key_chars):
        raise InvalidInput(f"must be a string of at most {max_key_chars} characters", field="routing_key")
    return transactions, key


def read_policy(raw: bytes) -> Policy:
    try:
        return Policy.model_validate(parse_json(raw))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        raise InvalidInput(first["msg"], field=field) from None


def model_info(core: InferenceCore) -> dict[str, Any]:
    """Versions, runtimes, training metrics, threshold and feature schema of the primary version."""
    spec = core.rollout.spec(core.primary_version())
    return {
        "version": spec.version,
        "model_versions": spec.tags(),
        "versions": dict(core.rollout.router.versions),
        "runtimes": dict(core.runtimes(spec.version)),
        "threshold": core.threshold_for(spec),
        "metrics": spec.metrics,
        "schema": spec.schema.model_dump(mode="json", exclude_none=True),
    }


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body, default=str), media_type="application/json")


async def predict(request: Request) -> Response:
    state = request.app.state
    try:
        transactions, key = read_predict_body(await request.body(), max_key_chars=state.max_key_chars)
        scored = await state.core.predict(transactions, transport=TRANSPORT, routing_key=key, strict=True)
    except Exception as exc:  # noqa: BLE001 - the HTTP boundary maps every error once
        return error_response(exc)
    return _json(scored.to_dict())


async def model(request: Request) -> Response:
    try:
        return _json(model_info(request.app.state.core))
    except Exception as exc:  # noqa: BLE001 - the HTTP boundary maps every error once
        return error_response(exc)


def _admin(action: Action) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            admin.require_admin(request.headers.get("authorization"))
            return _json(await action(request.app.state.core, request))
        except Exception as exc:  # noqa: BLE001 - the HTTP boundary maps every error once
            return error_response(exc)

    return endpoint


async def _get_policy(core: InferenceCore, _: Request) -> dict[str, Any]:
    return await admin.get_policy(core)


async def _set_policy(core: InferenceCore, request: Request) -> dict[str, Any]:
    return await admin.set_policy(core, read_policy(await request.body()))


async def _rollback(core: InferenceCore, _: Request) -> dict[str, Any]:
    return await admin.rollback(core)


async def _reload(core: InferenceCore, _: Request) -> dict[str, Any]:
    return await admin.reload(core)


async def docs(request: Request) -> Response:
    state = request.app.state
    if state.document is None:
        state.document = openapi.document(
            state.base_openapi(), state.core, max_key_chars=state.max_key_chars, predict_auth=state.predict_auth
        )
    return _json(state.document)


# Mounted at the root like the OIP app: BentoML's pass-through mount claims only the paths listed here.
app = Starlette(
    routes=[
        Route("/predict", predict, methods=["POST"]),
        Route("/model", model, methods=["GET", "POST"]),
        Route("/admin/policy/get", _admin(_get_policy), methods=["POST"]),
        Route("/admin/policy", _admin(_set_policy), methods=["POST"]),
        Route("/admin/rollback", _admin(_rollback), methods=["POST"]),
        Route("/admin/reload", _admin(_reload), methods=["POST"]),
        Route("/docs.json", docs, methods=["GET"]),
    ]
)


def attach(
    core: InferenceCore,
    *,
    max_key_chars: int,
    predict_auth: bool,
    base_openapi: Callable[[], dict[str, Any]],
) -> None:
    """Give the app this worker's core (called from the service's ``__init__``)."""
    app.state.core = core
    app.state.max_key_chars = max_key_chars
    app.state.predict_auth = predict_auth
    app.state.base_openapi = base_openapi
    app.state.document = None
