"""REST ``POST /predict`` as a plain Starlette route (mounted by service.py), and the OpenAPI document that lists it.

Why not ``@bentoml.api``: BentoML's API route validates the body into per-row pydantic objects, dumps them
back to dicts and renders a pydantic response, and that machinery, not the models, was where a single-row
request spent its time (py-spy under load). Here the body is parsed with orjson and validated once by the
schema-compiled encoder (``fraudserve.encoder``), and the response is rendered straight from the score arrays.
BentoML's middleware stack (the security guards, metrics, tracing, access log) still wraps this route.

BentoML documents only its own API routes, so ``/docs.json`` is served here: BentoML's document plus
``/predict`` with its request and response schemas and every error status it answers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fraudserve.errors import InvalidInput
from fraudserve.http_errors import error_response
from fraudserve.inference import InferenceCore, PredictResponse

TRANSPORT = "rest"
FIELD = "transactions"
_BODY_FIELDS = frozenset({FIELD, "routing_key"})


class ErrorBody(BaseModel):
    """The one error shape of every route."""

    error: str = Field(description="Reason code: invalid_input, payload_too_large, unauthorized, unavailable...")
    message: str = Field(description="What went wrong, for a person.")
    field: str | None = Field(None, description="Path of the offending field, e.g. transactions[0].amount.")


_ERRORS = {
    "400": "Malformed body or a value outside the schema; `field` names it.",
    "401": "Missing or unknown API key.",
    "403": "The key may not use this route.",
    "413": "More rows than FRAUD_MAX_ROWS_PER_REQUEST, or a body over FRAUD_MAX_REQUEST_BODY_BYTES.",
    "429": "Rate limit reached; see Retry-After.",
    "503": "Overloaded or a model runner is unavailable; retry after Retry-After.",
    "504": "The request missed its deadline (FRAUD_REQUEST_TIMEOUT_S).",
}


def read_body(raw: bytes, *, max_key_chars: int) -> tuple[list[Any], str | None]:
    """The body's transactions (a single object becomes a list of one) and its routing key."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # The stdlib parser accepts NaN/Infinity, so such a value is refused by the encoder naming its field;
        # anything else it refuses too, with a line and column.
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"the body is not valid JSON: {exc}", field="body") from None
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


async def predict(request: Request) -> Response:
    state = request.app.state
    try:
        transactions, key = read_body(await request.body(), max_key_chars=state.max_key_chars)
        scored = await state.core.predict(transactions, transport=TRANSPORT, routing_key=key, strict=True)
    except Exception as exc:  # noqa: BLE001 - the HTTP boundary maps every error once
        return error_response(exc)
    return Response(orjson.dumps(scored.to_dict()), media_type="application/json")


async def docs(request: Request) -> Response:
    state = request.app.state
    if state.document is None:
        state.document = openapi_document(state.base_openapi(), state.core, max_key_chars=state.max_key_chars)
    return JSONResponse(state.document)


# Mounted at the root like the OIP app: BentoML's pass-through mount claims only the paths listed here.
app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/docs.json", docs, methods=["GET"])])


def attach(core: InferenceCore, *, max_key_chars: int, base_openapi: Callable[[], dict[str, Any]]) -> None:
    """Give the app this worker's core (called from the service's ``__init__``)."""
    app.state.core = core
    app.state.max_key_chars = max_key_chars
    app.state.base_openapi = base_openapi
    app.state.document = None


def request_model(core: InferenceCore, *, max_key_chars: int) -> type[BaseModel]:
    transaction = core.schema.pydantic_model("Transaction")
    many = Annotated[list[transaction], Field(min_length=1, max_length=core.max_rows)]  # type: ignore[valid-type]
    return create_model(  # type: ignore[call-overload,no-any-return]
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        transactions=(
            transaction | many,
            Field(description="One transaction, or a list of 1..FRAUD_MAX_ROWS_PER_REQUEST."),
        ),
        routing_key=(
            str | None,
            Field(
                None,
                max_length=max_key_chars,
                description="Sticky A/B key (e.g. a customer id): the same key always gets the same variant.",
            ),
        ),
    )


def openapi_document(base: dict[str, Any], core: InferenceCore, *, max_key_chars: int) -> dict[str, Any]:
    """BentoML's document with ``/predict`` added: request, response and error schemas."""
    document = dict(base)
    schemas: dict[str, Any] = dict(document.setdefault("components", {}).get("schemas", {}))
    ref = "#/components/schemas/{model}"
    for model in (request_model(core, max_key_chars=max_key_chars), PredictResponse, ErrorBody):
        schema = model.model_json_schema(ref_template=ref)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    document["components"] = {**document["components"], "schemas": schemas}

    def content(name: str) -> dict[str, Any]:
        return {"application/json": {"schema": {"$ref": ref.format(model=name)}}}

    ok = {"description": "One prediction per transaction.", "content": content("PredictResponse")}
    responses: dict[str, Any] = {"200": ok}
    responses.update({code: {"description": text, "content": content("ErrorBody")} for code, text in _ERRORS.items()})
    document["paths"] = {
        **document.get("paths", {}),
        "/predict": {
            "post": {
                "tags": ["Service APIs"],
                "operationId": "fraud_detection__predict",
                "description": "Score one transaction or a list: ensemble probability, decision, per-model scores.",
                "requestBody": {"required": True, "content": content("PredictRequest")},
                "responses": responses,
            }
        },
    }
    return document
