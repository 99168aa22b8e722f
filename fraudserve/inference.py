"""The one transport-free inference core: validate -> features -> runners -> combine -> response.

REST ``/predict``, the Open Inference Protocol (REST and gRPC), batch and stream scoring all
call it. It knows nothing of HTTP or gRPC: it raises ``FraudServeError`` subclasses, and
each transport maps them once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, Field

from fraudserve.batcher import RowBatcher
from fraudserve.ensemble import EnsembleSpec
from fraudserve.errors import FraudServeError, InvalidInput, NotFound, PayloadTooLarge
from fraudserve.metrics import PREDICTIONS, REQUEST_ROWS, labelled
from fraudserve.rollout.engine import Rollout
from fraudserve.rollout.policy import Route
from fraudserve.scoring import combine_scores, threshold_for

# Readiness probes (REST /readyz, OIP ready) score one row: never from the cache, always on the
# primary version, and left out of the per-variant metrics.
PROBE_TRANSPORT = "probe"


class MemberScorer(Protocol):
    """Scores an encoded matrix with one member model; ``bulk`` asks for the unbatched path.

    The core passes ``version=`` only for a version other than the scorer's own (the spec it
    was built with), so a scorer serving one version may leave the keyword out.
    """

    async def __call__(self, member: str, features: np.ndarray, *, bulk: bool) -> np.ndarray: ...


class Prediction(BaseModel):
    fraud_probability: float = Field(description="Ensemble probability that the transaction is fraud.")
    is_fraud: bool = Field(description="fraud_probability >= threshold.")
    threshold: float
    scores: dict[str, float] = Field(description="Per-model scores (probabilities; iforest: anomaly score).")
    model_version: str = Field(description="Version of the ensemble that produced this prediction.")
    variant: str = Field("stable", description="Traffic policy variant that served it (stable, canary, a, b...).")
    latency_ms: float = Field(description="Server-side time to score the request this row came in.")


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model_versions: dict[str, str] = Field(description="Model store tag of the ensemble and each member.")
    runtimes: dict[str, str] = Field(
        default_factory=dict, description="Runtime each member was scored with: onnx or sklearn."
    )
    routing_note: str | None = Field(None, description="Why the request was routed as it was, when notable.")
    latency_ms: float


@dataclass(frozen=True)
class ScoredBatch:
    """Scores of one request, as arrays; ``to_dict`` renders them for JSON transports."""

    probabilities: np.ndarray
    decisions: np.ndarray
    member_scores: dict[str, np.ndarray]
    threshold: float
    version: str
    model_versions: dict[str, str]
    latency_ms: float
    variant: str = "stable"
    routing_note: str | None = None
    runtimes: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The ``PredictResponse`` body as plain JSON values (no per-row pydantic objects on the hot path)."""
        members = list(self.member_scores)
        columns = [self.member_scores[m].tolist() for m in members]
        threshold, version, variant, latency = self.threshold, self.version, self.variant, self.latency_ms
        predictions = [
            {
                "fraud_probability": p,
                "is_fraud": d,
                "threshold": threshold,
                "scores": dict(zip(members, row, strict=True)),
                "model_version": version,
                "variant": variant,
                "latency_ms": latency,
            }
            for p, d, *row in zip(self.probabilities.tolist(), self.decisions.tolist(), *columns, strict=True)
        ]
        return {
            "predictions": predictions,
            "model_versions": self.model_versions,
            "runtimes": self.runtimes,
            "routing_note": self.routing_note,
            "latency_ms": latency,
        }

    def to_response(self) -> PredictResponse:
        """``to_dict`` checked against the documented response model (tests and tools; not the hot path)."""
        return PredictResponse.model_validate(self.to_dict())


class InferenceCore:
    def __init__(
        self,
        spec: EnsembleSpec,
        scorer: MemberScorer,
        *,
        max_rows: int,
        bulk_rows_threshold: int,
        threshold: float | None = None,
        rollout: Rollout | None = None,
        batcher: RowBatcher | None = None,
        runtimes: Callable[[str], Mapping[str, str]] | None = None,
        separate_bulk_path: bool = False,
    ) -> None:
        self.spec = spec
        self.scorer = scorer
        self.max_rows = max_rows
        self.bulk_rows_threshold = bulk_rows_threshold
        self.threshold_override = threshold
        self.threshold = self.threshold_for(spec)
        self.model_versions = spec.tags()
        # Traffic policy, cache and shadow; by default one version (``spec``) and no cache.
        self.rollout = rollout or Rollout(spec)
        # Requests of up to ``bulk_rows_threshold`` rows share runner calls through it (fraudserve/batcher.py).
        self.batcher = batcher
        # The batcher scores elsewhere than ``scorer``'s bulk path (in-process members, runners for bulk):
        # readiness and warm-up then check both.
        self.separate_bulk_path = separate_bulk_path
        # version -> {member: runtime}, asked once per version (fraudserve/runtime.py decides, runners follow it).
        self._describe_runtimes = runtimes
        self._runtimes: dict[str, Mapping[str, str]] = {}
        if batcher is not None and batcher.max_batch_rows < bulk_rows_threshold:
            raise ValueError("the entry batch must hold the largest batched request (bulk_rows_threshold rows)")

    def runtimes(self, version: str) -> Mapping[str, str]:
        """The runtime each member of ``version`` is scored with (empty when the scorer does not say)."""
        found = self._runtimes.get(version)
        if found is None:
            found = {} if self._describe_runtimes is None else dict(self._describe_runtimes(version))
            self._runtimes[version] = found
        return found

    def threshold_for(self, spec: EnsembleSpec) -> float:
        return threshold_for(spec, self.threshold_override)

    @property
    def schema(self) -> Any:
        return self.spec.schema

    def check_rows(self, n_rows: int, field: str) -> None:
        if n_rows == 0:
            raise InvalidInput("at least one transaction is required", field=field)
        if n_rows > self.max_rows:
            raise PayloadTooLarge(f"{n_rows} rows exceed the limit of {self.max_rows} per request", field=field)

    def encode(
        self, records: Sequence[Mapping[str, Any]], field: str = "transactions", *, strict: bool = False
    ) -> np.ndarray:
        """Validate + features: rows as mappings -> the encoded matrix the runners take (validated once, here)."""
        self.check_rows(len(records), field)
        return self.schema.encode_records(records, prefix=field, strict=strict)

    async def predict(
        self,
        records: Sequence[Mapping[str, Any]],
        *,
        transport: str,
        routing_key: str | None = None,
        strict: bool = False,
    ) -> ScoredBatch:
        """Score rows given as mappings (JSON transports); ``strict`` refuses fields the schema does not know."""
        return await self._score(self.encode(records, strict=strict), transport=transport, routing_key=routing_key)

    async def score_member(
        self,
        member: str,
        features: np.ndarray,
        *,
        transport: str,
        field: str = "transactions",
        version: str | None = None,
    ) -> np.ndarray:
        """Validated like ``score``, then scored by ``member`` alone (per-model OIP inference).

        ``version`` None: the policy's primary version (what ``primary_version`` names).
        """
        if member not in self.spec.members:
            raise NotFound(f"unknown member model {member!r}; members are {list(self.spec.members)}", field="model")
        self.check_rows(len(features), field)
        self.schema.validate_matrix(features, prefix=field)
        version = version or self.primary_version()
        spec = self.spec if version == self.spec.version else self.rollout.spec(version)
        scores = (await self._score_members(spec, features, members=(member,)))[member]
        labelled(REQUEST_ROWS, transport).observe(len(features))
        return scores

    async def probe_member(self, member: str, row: np.ndarray, *, version: str | None = None) -> np.ndarray:
        """A readiness / warm-up call: ``member`` scores ``row`` on every path a request may take."""
        scores = await self.score_member(member, row, transport=PROBE_TRANSPORT, version=version)
        if self.separate_bulk_path:
            version = version or self.primary_version()
            extra = {} if version == self.spec.version else {"version": version}
            await self.scorer(member, row, bulk=True, **extra)
        return scores

    def primary_version(self) -> str:
        """The version that serves unsplit traffic now (stable, or the active colour)."""
        self.rollout.refresh()
        return self.rollout.router.primary_version

    async def score(
        self,
        features: np.ndarray,
        *,
        transport: str,
        field: str = "transactions",
        routing_key: str | None = None,
        version: str | None = None,
    ) -> ScoredBatch:
        """Route -> (cache) runners -> combine. ``features`` must be encoded with the schema (validated here).

        The traffic policy picks the version (``routing_key`` keeps a client on one A/B variant);
        a shadow version, if any, scores the same rows in the background, never awaited here.
        An explicit ``version`` bypasses the policy: that version scores (variant ``pinned``),
        NotFound when it cannot be loaded here.
        """
        self.check_rows(len(features), field)
        self.schema.validate_matrix(features, prefix=field)
        return await self._score(features, transport=transport, routing_key=routing_key, version=version)

    async def _score(
        self, features: np.ndarray, *, transport: str, routing_key: str | None, version: str | None = None
    ) -> ScoredBatch:
        started = time.perf_counter()
        probe = transport == PROBE_TRANSPORT
        self.rollout.refresh()
        if version is not None:
            spec = self.rollout.pinned(version)
            route = Route("pinned", spec.version)
        else:
            route = Route("probe", self.rollout.router.primary_version) if probe else self.rollout.route(routing_key)
            spec = self.rollout.spec(route.version)
        member_scores = await self._member_scores(spec, features, cached=not probe)
        scores = combine_scores(spec, member_scores, threshold_override=self.threshold_override)
        probabilities, decisions = scores.probabilities, scores.decisions
        labelled(REQUEST_ROWS, transport).observe(len(features))
        flagged = int(decisions.sum())
        if flagged:
            labelled(PREDICTIONS, "fraud").inc(flagged)
        if flagged < len(decisions):
            labelled(PREDICTIONS, "legit").inc(len(decisions) - flagged)
        latency_s = time.perf_counter() - started
        if not probe:
            self.rollout.observe(route, probabilities, latency_s)
        if route.shadow_version is not None:
            work = self._shadow_scores(route.shadow_version, features)
            self.rollout.spawn_shadow(work, route, probabilities, decisions)
        return ScoredBatch(
            probabilities=probabilities,
            decisions=decisions,
            member_scores=scores.member_scores,
            threshold=scores.threshold,
            version=spec.version,
            model_versions=self.model_versions if spec is self.spec else spec.tags(),
            latency_ms=round(latency_s * 1000.0, 3),
            variant=route.variant,
            routing_note=route.note,
            runtimes=self.runtimes(spec.version),
        )

    async def _member_scores(self, spec: EnsembleSpec, features: np.ndarray, *, cached: bool) -> dict[str, np.ndarray]:
        """Member scores of every row: from the response cache where present, the rest from the runners."""
        cache = self.rollout.cache if cached else None
        if cache is None:
            return await self._score_members(spec, features)
        # Read once: a policy change while the runners score must not file these rows under the new generation.
        generation = self.rollout.revision
        keys = cache.keys(spec.version, features)
        found = await cache.lookup(keys, width=len(spec.members), generation=generation)
        missing = [i for i, row in enumerate(found) if row is None]
        matrix = np.empty((len(features), len(spec.members)), dtype=np.float64)
        for i, row in enumerate(found):
            if row is not None:
                matrix[i] = row
        if missing:
            rows = features if len(missing) == len(features) else features[missing]
            scored = await self._score_members(spec, rows)
            block = np.column_stack([scored[m] for m in spec.members])
            matrix[missing] = block
            await cache.store([keys[i] for i in missing], block, generation=generation)
        return {m: matrix[:, j] for j, m in enumerate(spec.members)}

    async def _score_members(
        self, spec: EnsembleSpec, features: np.ndarray, *, members: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        members = spec.members if members is None else members
        bulk = len(features) > self.bulk_rows_threshold
        if self.batcher is not None and not bulk:
            return await self.batcher.score(spec.version, members, features)
        extra = {} if spec.version == self.spec.version else {"version": spec.version}
        results = await asyncio.gather(*(self.scorer(m, features, bulk=bulk, **extra) for m in members))
        return {m: np.asarray(r, dtype=np.float64).reshape(-1) for m, r in zip(members, results, strict=True)}

    async def warm_up(self, versions: Iterable[str] | None = None) -> dict[str, str]:
        """Score one row with every member of each version (default: the policy's), so the runners load them now.

        Returns ``{version: "ok" | "error: <member>: <reason>"}`` (the first failing member); the
        admin API refuses a policy whose report has an error (fraudserve/rollout/admin.py).
        """
        probe = np.asarray(self.schema.encode_records([self.schema.example_row()]))
        wanted = sorted(set(self.rollout.router.versions.values() if versions is None else versions))
        jobs = [(v, m) for v in wanted for m in self.rollout.spec(v).members]
        results = await asyncio.gather(
            *(self.probe_member(m, probe, version=v) for v, m in jobs),
            return_exceptions=True,
        )
        report = dict.fromkeys(wanted, "ok")
        for (version, member), result in zip(jobs, results, strict=True):
            if isinstance(result, BaseException) and report[version] == "ok":
                reason = result.message if isinstance(result, FraudServeError) else repr(result)
                report[version] = f"error: {member}: {reason}"
        return report

    async def _shadow_scores(self, version: str, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        spec = self.rollout.spec(version)
        member_scores = await self._score_members(spec, features)
        scores = combine_scores(spec, member_scores, threshold_override=self.threshold_override)
        return scores.probabilities, scores.decisions
