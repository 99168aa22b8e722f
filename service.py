"""The entry service: composes the model runners and exposes the inference core.

    bentoml serve service:FraudDetection       # REST on :3000 (see README.md)

It only wires: every API below is a thin call into ``fraudserve.inference.InferenceCore``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

import bentoml
import numpy as np
from pydantic import BeforeValidator, Field

from fraudserve.http_errors import error_response
from fraudserve.inference import InferenceCore, PredictResponse
from fraudserve.remote import RunnerScorer
from fraudserve.settings import get_settings
from models import store
from runners.hgb import HgbRunner
from runners.iforest import IforestRunner
from runners.logreg import LogregRunner

log = logging.getLogger(__name__)
settings = get_settings()
SPEC = store.load_ensemble(settings.model_prefix, settings.model_version)
Transaction = SPEC.schema.pydantic_model("Transaction")

TransactionsIn = Annotated[
    list[Transaction],  # type: ignore[valid-type]
    BeforeValidator(lambda value: [value] if isinstance(value, dict) else value),
    Field(description="A list of transactions (a single object is accepted too), at most FRAUD_MAX_ROWS_PER_REQUEST."),
]


@bentoml.service(
    name="fraud_detection",
    workers=settings.api_workers,
    traffic={"timeout": settings.runner_timeout_s},
)
class FraudDetection:
    ensemble_ref = bentoml.models.BentoModel(SPEC.tag("ensemble"))
    hgb = bentoml.depends(HgbRunner)
    logreg = bentoml.depends(LogregRunner)
    iforest = bentoml.depends(IforestRunner)

    def __init__(self) -> None:
        scorer = RunnerScorer({"hgb": self.hgb, "logreg": self.logreg, "iforest": self.iforest})
        self.core = InferenceCore(
            SPEC,
            scorer,
            max_rows=settings.max_rows_per_request,
            bulk_rows_threshold=settings.bulk_rows_threshold,
            threshold=settings.decision_threshold,
        )
        self._probe = np.asarray(SPEC.schema.encode_records([SPEC.schema.example_row()]))

    @bentoml.api(route="/predict")
    async def predict(self, transactions: TransactionsIn) -> PredictResponse:
        """Score one transaction or a list: ensemble probability, decision, per-model scores."""
        try:
            scored = await self.core.predict([row.model_dump() for row in transactions], transport="rest")
        except Exception as exc:  # noqa: BLE001 - the HTTP boundary maps every error once
            return error_response(exc)  # type: ignore[return-value]
        return scored.to_response()

    @bentoml.api(route="/model")
    def model(self) -> dict[str, Any]:
        """Versions, training metrics, decision threshold and feature schema of the served ensemble."""
        return {
            "version": SPEC.version,
            "model_versions": self.core.model_versions,
            "threshold": self.core.threshold,
            "metrics": SPEC.metrics,
            "schema": SPEC.schema.model_dump(mode="json", exclude_none=True),
        }

    async def __is_ready__(self) -> bool:
        """Ready only when every runner answers a real scoring call in time."""
        try:
            async with asyncio.timeout(settings.ready_probe_timeout_s):
                await self.core.score(self._probe, transport="probe")
            return True
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            log.warning("readiness probe failed: %r", exc)
            return False
