"""The one transport-free inference core: validate -> features -> runners -> combine -> response.

REST ``/predict``, the Open Inference Protocol (REST and gRPC), batch and stream scoring all
call it. It knows nothing of HTTP or gRPC: it raises ``FraudServeError`` subclasses, and
each transport maps them once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, Field

from fraudserve.ensemble import EnsembleSpec
from fraudserve.errors import InvalidInput, PayloadTooLarge
from fraudserve.metrics import PREDICTIONS, REQUEST_ROWS


class MemberScorer(Protocol):
    """Scores an encoded matrix with one member model; ``bulk`` asks for the unbatched path."""

    async def __call__(self, member: str, features: np.ndarray, *, bulk: bool) -> np.ndarray: ...


class Prediction(BaseModel):
    fraud_probability: float = Field(description="Ensemble probability that the transaction is fraud.")
    is_fraud: bool = Field(description="fraud_probability >= threshold.")
    threshold: float
    scores: dict[str, float] = Field(description="Per-model scores (probabilities; iforest: anomaly score).")
    model_version: str = Field(description="Version of the ensemble that produced this prediction.")
    latency_ms: float = Field(description="Server-side time to score the request this row came in.")


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model_versions: dict[str, str] = Field(description="Model store tag of the ensemble and each member.")
    latency_ms: float


@dataclass(frozen=True)
class ScoredBatch:
    """Scores of one request, as arrays; ``to_response`` renders them for JSON transports."""

    probabilities: np.ndarray
    decisions: np.ndarray
    member_scores: dict[str, np.ndarray]
    threshold: float
    version: str
    model_versions: dict[str, str]
    latency_ms: float

    def to_response(self) -> PredictResponse:
        members = list(self.member_scores)
        columns = [self.member_scores[m].tolist() for m in members]
        predictions = [
            Prediction(
                fraud_probability=p,
                is_fraud=d,
                threshold=self.threshold,
                scores=dict(zip(members, row, strict=True)),
                model_version=self.version,
                latency_ms=self.latency_ms,
            )
            for p, d, *row in zip(self.probabilities.tolist(), self.decisions.tolist(), *columns, strict=True)
        ]
        return PredictResponse(predictions=predictions, model_versions=self.model_versions, latency_ms=self.latency_ms)


class InferenceCore:
    def __init__(
        self,
        spec: EnsembleSpec,
        scorer: MemberScorer,
        *,
        max_rows: int,
        bulk_rows_threshold: int,
        threshold: float | None = None,
    ) -> None:
        self.spec = spec
        self.scorer = scorer
        self.max_rows = max_rows
        self.bulk_rows_threshold = bulk_rows_threshold
        self.threshold = spec.threshold if threshold is None else threshold
        self.model_versions = {"ensemble": spec.tag("ensemble"), **{m: spec.tag(m) for m in spec.members}}

    @property
    def schema(self) -> Any:
        return self.spec.schema

    def check_rows(self, n_rows: int, field: str) -> None:
        if n_rows == 0:
            raise InvalidInput("at least one transaction is required", field=field)
        if n_rows > self.max_rows:
            raise PayloadTooLarge(f"{n_rows} rows exceed the limit of {self.max_rows} per request", field=field)

    def encode(self, records: Sequence[Mapping[str, Any]], field: str = "transactions") -> np.ndarray:
        """Validate + features: rows as mappings -> the encoded matrix the runners take."""
        self.check_rows(len(records), field)
        return self.schema.encode_records(records, prefix=field)

    async def predict(self, records: Sequence[Mapping[str, Any]], *, transport: str) -> ScoredBatch:
        return await self.score(self.encode(records), transport=transport)

    async def score(self, features: np.ndarray, *, transport: str, field: str = "transactions") -> ScoredBatch:
        """Runners -> combine. ``features`` must be encoded with the schema (validated here)."""
        started = time.perf_counter()
        self.check_rows(len(features), field)
        self.schema.validate_matrix(features, prefix=field)
        bulk = len(features) > self.bulk_rows_threshold
        results = await asyncio.gather(*(self.scorer(m, features, bulk=bulk) for m in self.spec.members))
        member_scores = {
            m: np.asarray(r, dtype=np.float64).reshape(-1) for m, r in zip(self.spec.members, results, strict=True)
        }
        probabilities = self.spec.combine(member_scores)
        decisions = probabilities >= self.threshold
        REQUEST_ROWS.labels(transport=transport).observe(len(features))
        flagged = int(decisions.sum())
        if flagged:
            PREDICTIONS.labels(decision="fraud").inc(flagged)
        if flagged < len(decisions):
            PREDICTIONS.labels(decision="legit").inc(len(decisions) - flagged)
        return ScoredBatch(
            probabilities=probabilities,
            decisions=decisions,
            member_scores=member_scores,
            threshold=self.threshold,
            version=self.spec.version,
            model_versions=self.model_versions,
            latency_ms=round((time.perf_counter() - started) * 1000.0, 3),
        )
