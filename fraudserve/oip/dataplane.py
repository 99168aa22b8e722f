"""The Open Inference Protocol data plane shared by the REST app and the gRPC servicer.

Transport-free: requests and responses are plain dataclasses of ``Tensor`` values; scoring
goes through the worker's ``InferenceCore`` (so through the runners and their batching).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata

import numpy as np

from fraudserve.inference import InferenceCore
from fraudserve.oip.codec import Tensor, features_matrix, select_outputs
from fraudserve.oip.repository import DECISION, PROBABILITY, ModelEntry, ModelRepository, score_output

log = logging.getLogger(__name__)

SERVER_NAME = "fraud_detection"
EXTENSIONS = ("binary_tensor_data", "model_repository")


def _server_version() -> str:
    try:
        return metadata.version("fraud-bundle")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class InferRequest:
    model_name: str
    inputs: Sequence[Tensor]
    model_version: str = ""
    id: str = ""
    outputs: Sequence[str] = field(default_factory=tuple)  # empty: every output


@dataclass(frozen=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[Tensor]


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]


class DataPlane:
    def __init__(self, core: InferenceCore, *, ready_timeout_s: float) -> None:
        self.core = core
        self.repository = ModelRepository(core.spec)
        self.ready_timeout_s = ready_timeout_s
        self.metadata = ServerMetadata(SERVER_NAME, _server_version(), EXTENSIONS)
        self._probe = np.asarray(core.schema.encode_records([core.schema.example_row()]))

    def live(self) -> bool:
        return True

    async def ready(self) -> bool:
        """Ready when the ensemble scores a probe row in time (every runner answers)."""
        return await self._probe_model(None)

    async def model_ready(self, name: str, version: str = "") -> bool:
        return await self._probe_model(self.repository.resolve(name, version).member)

    async def _probe_model(self, member: str | None) -> bool:
        try:
            async with asyncio.timeout(self.ready_timeout_s):
                if member is None:
                    await self.core.score(self._probe, transport="probe")
                else:
                    await self.core.score_member(member, self._probe, transport="probe")
            return True
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            log.warning("OIP readiness probe of %s failed: %r", member or "ensemble", exc)
            return False

    def model_metadata(self, name: str, version: str = "") -> ModelEntry:
        return self.repository.resolve(name, version)

    def index(self) -> list[ModelEntry]:
        return list(self.repository.models.values())

    async def infer(self, request: InferRequest, *, transport: str) -> InferResponse:
        entry = self.repository.resolve(request.model_name, request.model_version)
        select_outputs({o.name: o for o in entry.outputs}, request.outputs, model_name=entry.name)
        matrix, prefix = features_matrix(self.core.schema, request.inputs)
        columns: dict[str, Tensor]
        if entry.member is None:
            scored = await self.core.score(matrix, transport=transport, field=prefix)
            columns = {
                PROBABILITY: Tensor(PROBABILITY, "FP64", scored.probabilities),
                DECISION: Tensor(DECISION, "BOOL", np.asarray(scored.decisions, dtype=np.bool_)),
                **{
                    score_output(m): Tensor(score_output(m), "FP64", scores)
                    for m, scores in scored.member_scores.items()
                },
            }
        else:
            scores = await self.core.score_member(entry.member, matrix, transport=transport, field=prefix)
            columns = {score_output(entry.member): Tensor(score_output(entry.member), "FP64", scores)}
        outputs = select_outputs(columns, request.outputs, model_name=entry.name)
        return InferResponse(entry.name, entry.version, request.id, outputs)
