"""The Open Inference Protocol data plane shared by the REST app and the gRPC servicer.

Transport-free: requests are plain dataclasses of undecoded ``WireTensor`` values, responses of
``Tensor`` values; scoring goes through the worker's ``InferenceCore`` (so through the runners and
their batching). Readiness comes from the worker's shared probe (``fraudserve.readiness``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata

import numpy as np

from fraudserve.inference import InferenceCore
from fraudserve.oip.codec import Input, Tensor, check_inputs, decode_matrix, payload_bytes, select_outputs
from fraudserve.oip.repository import DECISION, PROBABILITY, ModelEntry, ModelRepository, score_output
from fraudserve.readiness import probe_for

log = logging.getLogger(__name__)

SERVER_NAME = "fraud_detection"
EXTENSIONS = ("binary_tensor_data", "model_repository")
# Requests with more content than this are decoded in a worker thread, off the event loop.
OFFLOAD_BYTES = 256 * 1024


def _server_version() -> str:
    try:
        return metadata.version("fraud-bundle")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class InferRequest:
    model_name: str
    inputs: Sequence[Input]  # transports pass WireTensor: decoded only after the header checks
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


@dataclass(frozen=True)
class ModelState:
    entry: ModelEntry
    ready: bool

    @property
    def state(self) -> str:
        return "READY" if self.ready else "UNAVAILABLE"


class DataPlane:
    def __init__(
        self,
        core: InferenceCore,
        *,
        ready_timeout_s: float,
        ready_cache_s: float = 1.0,
        offload_bytes: int = OFFLOAD_BYTES,
    ) -> None:
        self.core = core
        self.repository = ModelRepository(core.spec)
        self.metadata = ServerMetadata(SERVER_NAME, _server_version(), EXTENSIONS)
        # Shared with service.py's __is_ready__: one probe round per worker however it is asked.
        self.readiness = probe_for(core, timeout_s=ready_timeout_s, cache_s=ready_cache_s)
        self.offload_bytes = offload_bytes

    def live(self) -> bool:
        return True

    async def ready(self) -> bool:
        """Ready when every runner scored a probe row in time (recently: see fraudserve.readiness)."""
        return await self.readiness.ready()

    async def model_ready(self, name: str, version: str = "") -> bool:
        return await self.readiness.ready(self.repository.resolve(name, version).member)

    async def model_states(self) -> list[ModelState]:
        """Every model with its state from the (shared) readiness probe."""
        states = await self.readiness.states()
        return [
            ModelState(e, all(states.values()) if e.member is None else states[e.member])
            for e in self.repository.models.values()
        ]

    def model_metadata(self, name: str, version: str = "") -> ModelEntry:
        return self.repository.resolve(name, version)

    def index(self) -> list[ModelEntry]:
        return list(self.repository.models.values())

    async def infer(self, request: InferRequest, *, transport: str) -> InferResponse:
        entry = self.repository.resolve(request.model_name, request.model_version)
        select_outputs({o.name: o for o in entry.outputs}, request.outputs, model_name=entry.name)
        matrix, prefix = await self._matrix(request.inputs)
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

    async def _matrix(self, inputs: Sequence[Input]) -> tuple[np.ndarray, str]:
        # Headers and the row cap first: an oversized request is refused before any content is decoded.
        check_inputs(inputs, max_rows=self.core.max_rows)
        if payload_bytes(inputs) > self.offload_bytes:
            # Decoding megabytes of BYTES in Python would stall every other request of this worker.
            return await asyncio.to_thread(decode_matrix, self.core.schema, inputs)
        return decode_matrix(self.core.schema, inputs)
