"""The message format, both ways.

Input: one field ``data`` holding a JSON object of one transaction (the schema's fields) and an
optional ``txn_id`` (string or integer) carried through to the outputs. The produce time is the
message id itself (Redis ids start with the append time in ms), so no clock field is needed.
Outputs: flat string fields, each carrying ``source_id`` (the input message id) so any reader
can deduplicate.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from fraudserve.encoder import encoder_for
from fraudserve.errors import FraudServeError, InvalidInput
from fraudserve.schema import FeatureSchema

from .broker import ScoreLayout

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


class MessageDecoder:
    """Validates messages against one schema with its compiled row encoder (``fraudserve.encoder``).

    Built once per worker: the encoder, the field names and the error texts are looked up here, not per
    message. Bodies are parsed with orjson; the stdlib parser is the fallback, so what it accepts and
    orjson refuses (NaN, Infinity, integers beyond 64 bits) is still refused by the encoder naming the field.
    """

    def __init__(self, schema: FeatureSchema) -> None:
        self.schema = schema
        self.encoder = encoder_for(schema)
        self.width = self.encoder.width
        self._unknown = f"unknown field; expected {list(self.encoder.names)} and optional {TXN_ID!r}"

    def decode(self, source_id: str, fields: Mapping[str, str]) -> Transaction:
        values, txn_id = self.values(fields)
        return Transaction(source_id, txn_id, np.array(values, dtype=np.float64))

    def values(self, fields: Mapping[str, str]) -> tuple[list[float], str | None]:
        """One message's encoded row and its txn_id; raises InvalidInput naming the bad field (``data.amount``)."""
        raw = fields.get(DATA_FIELD)
        if raw is None:
            raise InvalidInput(f"the message has no {DATA_FIELD!r} field (fields: {sorted(fields)})", field=DATA_FIELD)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise InvalidInput(f"not valid JSON: {exc}", field=DATA_FIELD) from None
        if type(body) is not dict:
            raise InvalidInput(f"must be a JSON object, got {type(body).__name__}", field=DATA_FIELD)
        txn_id = body.pop(TXN_ID, None)
        if txn_id is not None and (isinstance(txn_id, bool) or not isinstance(txn_id, str | int)):
            raise InvalidInput("must be a string or an integer", field=f"{DATA_FIELD}.{TXN_ID}")
        if not self.encoder.known.issuperset(body):
            unknown = sorted(k for k in body if k not in self.encoder.known)
            raise InvalidInput(self._unknown, field=f"{DATA_FIELD}.{unknown[0]}")
        return self.encoder.values(body, DATA_FIELD), None if txn_id is None else str(txn_id)


def decode_message(source_id: str, fields: Mapping[str, str], schema: FeatureSchema) -> Transaction:
    """Validates one message against the schema; raises InvalidInput naming the bad field."""
    return MessageDecoder(schema).decode(source_id, fields)


def score_layout(members: Sequence[str], *, threshold: float, model_version: str, consumer: str) -> ScoreLayout:
    """Fields of a score entry besides ``source_id``: txn_id (when the message had one), the scores, then
    those shared by a whole batch."""
    columns = (TXN_ID, "fraud_probability", "is_fraud", *(f"score_{m}" for m in members))
    shared = (("threshold", repr(threshold)), ("model_version", model_version), ("consumer", consumer))
    return ScoreLayout(columns, shared)


def score_values(
    txn_id: str | None, probability: float, is_fraud: bool, member_scores: Iterable[float]
) -> tuple[str, ...]:
    """The per-message values of ``score_layout``'s columns (no txn_id: that column is left out)."""
    # ".6f" parses back to the same float as repr(round(x, 6)) and costs a quarter of it (5 per message).
    scores = (f"{probability:.6f}", "1" if is_fraud else "0", *[f"{s:.6f}" for s in member_scores])
    return scores if txn_id is None else (txn_id, *scores)


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
