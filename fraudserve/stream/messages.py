"""The message format, both ways.

Input: one field ``data`` holding a JSON object of one transaction (the schema's fields) and an
optional ``txn_id`` (string or integer) carried through to the outputs. The produce time is the
message id itself (Redis ids start with the append time in ms), so no clock field is needed.
Outputs: flat string fields, each carrying ``source_id`` (the input message id) so any reader
can deduplicate.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fraudserve.errors import FraudServeError, InvalidInput
from fraudserve.schema import FeatureSchema

DATA_FIELD = "data"
TXN_ID = "txn_id"


@dataclass(frozen=True)
class Transaction:
    source_id: str
    txn_id: str | None
    row: np.ndarray


def encode_message(record: Mapping[str, Any], txn_id: str | int | None = None) -> dict[str, str]:
    body = dict(record)
    if txn_id is not None:
        body[TXN_ID] = txn_id
    return {DATA_FIELD: json.dumps(body, separators=(",", ":"), allow_nan=False)}


def decode_message(source_id: str, fields: Mapping[str, str], schema: FeatureSchema) -> Transaction:
    """Validates one message against the schema; raises InvalidInput naming the bad field."""
    raw = fields.get(DATA_FIELD)
    if raw is None:
        raise InvalidInput(f"the message has no {DATA_FIELD!r} field (fields: {sorted(fields)})", field=DATA_FIELD)
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise InvalidInput(f"not valid JSON: {exc}", field=DATA_FIELD) from None
    if not isinstance(body, dict):
        raise InvalidInput(f"must be a JSON object, got {type(body).__name__}", field=DATA_FIELD)
    txn_id = body.pop(TXN_ID, None)
    if txn_id is not None and (isinstance(txn_id, bool) or not isinstance(txn_id, str | int)):
        raise InvalidInput("must be a string or an integer", field=f"{DATA_FIELD}.{TXN_ID}")
    unknown = sorted(set(body) - set(schema.names))
    if unknown:
        raise InvalidInput(
            f"unknown field; expected {schema.names} and optional {TXN_ID!r}", field=f"data.{unknown[0]}"
        )
    try:
        row = schema.encode_records([body], prefix=DATA_FIELD)[0]
    except InvalidInput as exc:
        # "data[0].amount" -> "data.amount": a message holds one transaction, the index is noise.
        field = (exc.field or DATA_FIELD).replace(f"{DATA_FIELD}[0]", DATA_FIELD, 1)
        raise InvalidInput(exc.message, field=field) from None
    return Transaction(source_id, None if txn_id is None else str(txn_id), row)


def score_fields(
    txn: Transaction,
    probability: float,
    is_fraud: bool,
    member_scores: Mapping[str, float],
    *,
    threshold: float,
    model_version: str,
    consumer: str,
) -> dict[str, str]:
    fields = {"source_id": txn.source_id}
    if txn.txn_id is not None:
        fields[TXN_ID] = txn.txn_id
    fields |= {
        "fraud_probability": repr(round(probability, 6)),
        "is_fraud": "1" if is_fraud else "0",
        "threshold": repr(threshold),
        "model_version": model_version,
        **{f"score_{m}": repr(round(s, 6)) for m, s in member_scores.items()},
        "consumer": consumer,
    }
    return fields


def dead_letter_fields(
    source_id: str, fields: Mapping[str, str], error: Exception, *, deliveries: int, consumer: str
) -> dict[str, str]:
    """The dead-letter boundary's one mapping of errors: reason, field and message, plus the raw message."""
    if isinstance(error, FraudServeError):
        reason, field, message = error.reason, error.field or "", error.message
    else:
        reason, field, message = "internal", "", f"{type(error).__name__}: {error}"
    raw = fields.get(DATA_FIELD)
    return {
        "source_id": source_id,
        "reason": reason,
        "field": field,
        "message": message,
        DATA_FIELD: raw if raw is not None else json.dumps(dict(fields)),
        "deliveries": str(deliveries),
        "consumer": consumer,
    }
