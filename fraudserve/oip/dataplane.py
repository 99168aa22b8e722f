"""The Open Inference Protocol data plane shared by the REST app and the gRPC servicer.

Transport-free: requests are plain dataclasses of undecoded ``WireTensor`` values, responses of
``Tensor`` values; scoring goes through the worker's ``InferenceCore`` (so through the runners and
their batching). Readiness comes from the worker's shared probe (``fraudserve.readiness``).

Versions: without a version the ensemble is scored through the traffic policy (a request's
``routing_key`` parameter keeps a client on one A/B variant) and a member on the policy's
primary version; an explicit version scores that version, bypassing the policy (NotFound
when it cannot be loaded here). Every answer names the version that scored it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import numpy as np

from fraudserve.errors import InvalidInput
from fraudserve.inference import PROBE_TRANSPORT, InferenceCore
from fraudserve.oip.codec import Input, Tensor, check_inputs, decode_matrix, payload_bytes, select_outputs
from fraudserve.oip.repository import DECISION, PROBABILITY, ModelEntry, ModelRepository, score_output
from fraudserve.readiness import answers_in_time, probe_for

log = logging.getLogger(__name__)

SERVER_NAME = "fraud_detection"
EXTENSIONS = ("binary_tensor_data", "model_repository")
# Requests with more content than this are decoded in a worker thread, off the event loop.
OFFLOAD_BYTES = 256 * 1024
ROUTING_KEY = "routing_key"  # the request parameter of sticky A/B


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
    routing_key: str | None = None


def routing_key_parameter(parameters: Mapping[str, Any] | None) -> str | None:
    """The ``routing_key`` of a request's parameters: a JSON value (REST) or an ``InferParameter`` (gRPC)."""
    value = (parameters or {}).get(ROUTING_KEY)
    if value is None:
        return None
    if hasattr(value, "WhichOneof"):
        if value.WhichOneof("parameter_choice") != "string_param":
            raise InvalidInput("the routing_key parameter must be a string_param", field="parameters.routing_key")
        value = value.string_param
    if not isinstance(value, str):
        raise InvalidInput("the routing_key parameter must be a string", field="parameters.routing_key")
    return value


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
        routing_key_max_chars: int = 256,
    ) -> None:
        self.core = core
        self.repository = ModelRepository(core.spec)
        self.ready_timeout_s = ready_timeout_s
        self.routing_key_max_chars = routing_key_max_chars
        self.metadata = ServerMetadata(SERVER_NAME, _server_version(), EXTENSIONS)
        # Shared with service.py's __is_ready__: one probe round per worker however it is asked.
        self.readiness = probe_for(core, timeout_s=ready_timeout_s, cache_s=ready_cache_s)
        self.offload_bytes = offload_bytes
        self._probe = np.asarray(core.schema.encode_records([core.schema.example_row()]))

    def live(self) -> bool:
        return True

    async def ready(self) -> bool:
        """Ready when every runner scored a probe row in time (recently: see fraudserve.readiness)."""
        return await self.readiness.ready()

    async def model_ready(self, name: str, version: str = "") -> bool:
        member = self.repository.entry(name).member
        pinned = self._pinned(version)
        if pinned is None or pinned == self.core.primary_version():
            return await self.readiness.ready(member)
        return await self._probe_version(member, pinned)

    async def model_states(self) -> list[ModelState]:
        """Every model at every served version, with its runner's state from the (shared) readiness probe."""
        states = await self.readiness.states()
        return [ModelState(e, all(states.values()) if e.member is None else states[e.member]) for e in self.index()]

    async def _probe_version(self, member: str | None, version: str) -> bool:
        """Readiness of a version other than the primary one, which the shared probe does not score."""
        call: Awaitable[object] = (
            self.core.score(self._probe, transport=PROBE_TRANSPORT, version=version)
            if member is None
            else self.core.probe_member(member, self._probe, version=version)
        )
        return await answers_in_time(call, self.ready_timeout_s, f"{member or 'ensemble'} at {version}")

    def model_metadata(self, name: str, version: str = "") -> ModelEntry:
        return self.repository.at(name, self._pinned(version) or self.core.primary_version())

    def index(self) -> list[ModelEntry]:
        """Every model at every version the policy serves now, the primary version first."""
        primary = self.core.primary_version()
        versions = [primary, *sorted(set(self.core.rollout.router.versions.values()) - {primary})]
        return [self.repository.at(name, v) for v in versions for name in self.repository.models]

    def _pinned(self, version: str) -> str | None:
        """The concrete version a request names ("" names none); NotFound when it cannot serve here."""
        return self.core.rollout.pinned(version).version if version else None

    async def infer(self, request: InferRequest, *, transport: str) -> InferResponse:
        entry = self.repository.entry(request.model_name)
        pinned = self._pinned(request.model_version)
        key = request.routing_key
        if key is not None and len(key) > self.routing_key_max_chars:
            raise InvalidInput(
                f"routing_key has {len(key)} characters, at most {self.routing_key_max_chars} are allowed",
                field="parameters.routing_key",
            )
        select_outputs({o.name: o for o in entry.outputs}, request.outputs, model_name=entry.name)
        matrix, prefix = await self._matrix(request.inputs)
        columns: dict[str, Tensor]
        if entry.member is None:
            scored = await self.core.score(matrix, transport=transport, field=prefix, routing_key=key, version=pinned)
            version = scored.version
            columns = {
                PROBABILITY: Tensor(PROBABILITY, "FP64", scored.probabilities),
                DECISION: Tensor(DECISION, "BOOL", np.asarray(scored.decisions, dtype=np.bool_)),
                **{
                    score_output(m): Tensor(score_output(m), "FP64", scores)
                    for m, scores in scored.member_scores.items()
                },
            }
        else:
            # Resolved once here, so the version named in the answer is the one passed to the runner.
            version = pinned or self.core.primary_version()
            scores = await self.core.score_member(
                entry.member, matrix, transport=transport, field=prefix, version=version
            )
            columns = {score_output(entry.member): Tensor(score_output(entry.member), "FP64", scores)}
        outputs = select_outputs(columns, request.outputs, model_name=entry.name)
        return InferResponse(entry.name, version, request.id, outputs)

    async def _matrix(self, inputs: Sequence[Input]) -> tuple[np.ndarray, str]:
        # Headers and the row cap first: an oversized request is refused before any content is decoded.
        check_inputs(inputs, max_rows=self.core.max_rows)
        if payload_bytes(inputs) > self.offload_bytes:
            # Decoding megabytes of BYTES in Python would stall every other request of this worker.
            return await asyncio.to_thread(decode_matrix, self.core.schema, inputs)
        return decode_matrix(self.core.schema, inputs)
