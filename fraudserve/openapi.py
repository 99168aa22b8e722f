"""The OpenAPI document of the REST API: BentoML's (its infrastructure routes) plus the bundle's own routes.

BentoML documents only ``@bentoml.api`` methods, and the bundle's routes are a mounted Starlette app
(fraudserve/rest_api.py, see there why), so this module describes them: request bodies (the transaction
schema generated from the feature schema, ``minItems: 1``), responses, and every error status a route can
answer, all with the one error body. The guards (fraudserve/security) answer 401/403/413/429/503/504 on
any route; 400 and 409 come from the routes themselves.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from fraudserve.inference import InferenceCore, PredictResponse
from fraudserve.rollout.policy import Policy

REF = "#/components/schemas/{model}"
TAG = "Service APIs"


class ErrorBody(BaseModel):
    """The one error shape of every route."""

    error: str = Field(description="Reason code: invalid_input, payload_too_large, unauthorized, unavailable...")
    message: str = Field(description="What went wrong, for a person.")
    field: str | None = Field(None, description="Path of the offending field, e.g. transactions[0].amount.")


_GUARDS = {
    "413": "A body over FRAUD_MAX_REQUEST_BODY_BYTES (or, /predict, more than FRAUD_MAX_ROWS_PER_REQUEST rows).",
    "429": "Rate limit reached; see Retry-After.",
    "503": "Overloaded, or a model runner is unavailable; retry after Retry-After.",
    "504": "The request missed its deadline (FRAUD_REQUEST_TIMEOUT_S).",
}
_AUTH = {"401": "Missing or unknown API key.", "403": "The key may not use this route."}


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


def document(base: dict[str, Any], core: InferenceCore, *, max_key_chars: int, predict_auth: bool) -> dict[str, Any]:
    """``base`` (BentoML's document) with the bundle's routes added."""
    doc = dict(base)
    components = dict(doc.get("components", {}))
    schemas: dict[str, Any] = dict(components.get("schemas", {}))
    for model in (request_model(core, max_key_chars=max_key_chars), PredictResponse, ErrorBody, Policy):
        schema = model.model_json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    schemas["Policy"] = policy_schema(schemas["Policy"])
    components["schemas"] = schemas
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    doc["components"] = components

    any_object = {"type": "object"}
    predict_errors = {"400": "Malformed body or a value outside the schema; `field` names it.", **_GUARDS}
    admin_errors = {
        "409": "Not applied: a version of the change cannot score, or another worker changed the policy meanwhile.",
        **_GUARDS,
    }
    doc["paths"] = {
        **doc.get("paths", {}),
        "/predict": {
            "post": _operation(
                "predict",
                "Score one transaction or a list: ensemble probability, decision, per-model scores.",
                _content("PredictResponse"),
                predict_errors,
                body="PredictRequest",
                auth=predict_auth,
            )
        },
        "/model": {
            method: _operation(
                f"model_{method}",
                "Versions, runtimes, training metrics, decision threshold and feature schema of the serving version.",
                {"application/json": {"schema": any_object}},
                dict(_GUARDS),
                auth=predict_auth,
            )
            for method in ("get", "post")
        },
        "/admin/policy/get": {"post": _admin("admin_policy_get", "The traffic policy of this worker.", admin_errors)},
        "/admin/policy": {
            "post": _admin(
                "admin_policy",
                "Switch traffic now (body: a policy); every worker follows within FRAUD_POLICY_REFRESH_S.",
                {"400": "The policy is malformed; `field` names it.", **admin_errors},
                body="Policy",
            )
        },
        "/admin/rollback": {"post": _admin("admin_rollback", "Restore the previous traffic policy.", admin_errors)},
        "/admin/reload": {
            "post": _admin("admin_reload", "Resolve the registry aliases (stable, canary) again.", admin_errors)
        },
    }
    return doc


# Which fields each kind of policy needs (Policy's validator): JSON Schema has no "required if", so the document
# spells the kinds out as alternatives.
_NEEDS = {("single",): (), ("canary", "ab", "shadow"): ("candidate",), ("blue_green",): ("blue", "green")}


def policy_schema(plain: dict[str, Any]) -> dict[str, Any]:
    """Policy's schema as one alternative per group of kinds, each with the fields that kind requires."""
    alternatives = []
    for kinds, needed in _NEEDS.items():
        properties = dict(plain["properties"])
        properties["kind"] = {**properties["kind"], "enum": list(kinds)}
        for name in needed:  # a needed field cannot be null
            properties[name] = {"type": "string", **_string_rules(properties[name])}
        alternative = {**plain, "properties": properties, "required": ["kind", *needed] if needed else []}
        alternatives.append(alternative)
    return {"title": "Policy", "description": plain.get("description", ""), "anyOf": alternatives}


def _string_rules(schema: dict[str, Any]) -> dict[str, Any]:
    for option in schema.get("anyOf", [schema]):
        if option.get("type") == "string":
            return {k: v for k, v in option.items() if k != "type"}
    return {}


def _content(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": REF.format(model=name)}}}


def _admin(name: str, description: str, errors: dict[str, str], *, body: str | None = None) -> dict[str, Any]:
    return _operation(name, description, {"application/json": {"schema": {"type": "object"}}}, errors, body=body)


def _operation(
    name: str,
    description: str,
    ok: dict[str, Any],
    errors: dict[str, str],
    *,
    body: str | None = None,
    auth: bool = True,
) -> dict[str, Any]:
    statuses = {**(_AUTH if auth else {}), **errors}
    operation: dict[str, Any] = {
        "tags": [TAG],
        "operationId": f"fraud_detection__{name}",
        "description": description,
        "responses": {
            "200": {"description": "OK", "content": ok},
            **{
                code: {"description": text, "content": _content("ErrorBody")} for code, text in sorted(statuses.items())
            },
        },
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _content(body)}
    if auth:
        operation["security"] = [{"bearer": []}]
    return operation
