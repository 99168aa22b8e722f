"""Builds the runner service of one member model: the one runner builder, for either runtime.

Each runner loads its model from the store by tag in ``__init__`` in the runtime that
``fraudserve.runtime`` chooses (FRAUD_MEMBER_RUNTIME: the member's stored ONNX graph by default,
scikit-learn as setting or fallback; per version, as each version is loaded) and exposes two APIs:
``score`` is batchable (BentoML's adaptive micro-batching, sized from settings) and
``score_bulk`` is not, so that a large request is never shed by the ``max_latency_ms``
deadline of the batcher (docs/architecture.md: the deadline kills big requests part-way).

Both take the encoded features with ONE extra leading column: the version code of each row
(``fraudserve.rollout.versions``). A batch may mix versions (canary, shadow and stable requests
batch together): the runner groups rows by code, scores each group with that version's model
(loaded from the store on first use, hash-checked, then kept) and returns the scores in row
order. A group that fails (unknown version, artifact failing its hash check) gets NaN scores and
is logged, and the caller turns NaN into an error for its own request only: a batch is shared,
so raising would fail the other versions' requests too (a broken shadow would fail served traffic).
``model_ref`` stays the start-up version, so ``bentoml build`` packages that one only.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import bentoml
import numpy as np
from threadpoolctl import threadpool_limits

from fraudserve import tracing
from fraudserve.errors import InvalidInput, ModelStoreError
from fraudserve.metrics import RUNNER_BATCH_ROWS, RUNNER_LATENCY
from fraudserve.rollout.versions import version_code
from fraudserve.runtime import MemberModel, Runtime
from fraudserve.runtime import load as load_member
from fraudserve.settings import get_settings
from models import store

log = logging.getLogger(__name__)


def build_runner(kind: str, runtime: Runtime | None = None) -> Any:
    """The runner of member ``kind``; ``runtime`` overrides FRAUD_MEMBER_RUNTIME (benchmarks build both)."""
    settings = get_settings()
    preferred: Runtime = runtime or settings.member_runtime
    version = store.resolve_version(settings.model_prefix, settings.model_version)
    name = store.model_name(settings.model_prefix, kind)
    tag = f"{name}:{version}"

    def _member(model: bentoml.Model) -> MemberModel:
        return load_member(model, preferred, threads=settings.runner_threads)

    def _score(self: Any, features: np.ndarray, path: str) -> np.ndarray:
        started = time.perf_counter()
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] < 2:
            raise InvalidInput(f"expected [version code, features...] rows, got shape {features.shape}")
        codes, matrix = features[:, 0], features[:, 1:]
        result = np.full(len(features), np.nan, dtype=np.float64)
        runtimes: set[str] = set()
        for code in np.unique(codes):
            rows = codes == code
            try:
                member = self.model_for(float(code))
                result[rows] = member.score(matrix[rows])
                runtimes.add(member.runtime)
            except Exception:  # one version's failure must not fail the other versions' rows of the batch
                log.exception("%s: scoring version code %.0f failed; its rows get NaN", name, code)
        # A batch mixing versions served by different runtimes is labelled "onnx+sklearn".
        label = "+".join(sorted(runtimes)) or "none"
        RUNNER_LATENCY.labels(model=kind, path=path, runtime=label).observe(time.perf_counter() - started)
        RUNNER_BATCH_ROWS.labels(model=kind, path=path, runtime=label).observe(len(features))
        return result

    class Runner:
        model_ref = bentoml.models.BentoModel(tag)

        def __init__(self) -> None:
            threadpool_limits(limits=settings.runner_threads)
            self.model = _member(self.model_ref)
            self.tag = tag
            self.runtime = self.model.runtime
            self.models: dict[float, MemberModel] = {version_code(version): self.model}
            self._loading = threading.Lock()

        def model_for(self, code: float) -> MemberModel:
            model = self.models.get(code)
            if model is not None:
                return model
            with self._loading:  # one load per version even when batches arrive on several threads
                if code not in self.models:
                    self.models[code] = self._load(code)
                return self.models[code]

        def _load(self, code: float) -> MemberModel:
            # Listed on each miss, so a version trained after start-up is found too.
            for model in bentoml.models.list(name):
                if version_code(str(model.tag.version)) == code:
                    return _member(model)
            raise ModelStoreError(f"no {name} model in the store has version code {code:.0f}")

        @bentoml.api(
            batchable=settings.batching_enabled,
            max_batch_size=settings.max_batch_size_rows,
            max_latency_ms=settings.max_latency_ms,
        )
        def score(self, features: np.ndarray) -> np.ndarray:
            return _score(self, features, "batched" if settings.batching_enabled else "unbatched")

        @bentoml.api
        def score_bulk(self, features: np.ndarray) -> np.ndarray:
            return _score(self, features, "bulk")

        @bentoml.api
        def version(self) -> str:
            return version

    Runner.__name__ = Runner.__qualname__ = f"{kind.capitalize()}Runner"
    return runner_service(Runner, f"{settings.model_prefix}_{kind}_runner")


def runner_service(cls: type, name: str) -> Any:
    """Declare a runner class as a BentoML service, with the options every runner needs."""
    settings = get_settings()
    return bentoml.service(
        name=name,
        workers=settings.runner_workers,
        traffic={"timeout": settings.runner_timeout_s},
        # BentoML 1.4.39 recycles the caller's connection every 100 requests and closes it
        # under in-flight requests ("Connector is closed" -> 500 under load): never recycle.
        runner_connection={"max_requests": 2**31 - 1, "max_age": 10.0 * 365 * 24 * 3600},
        tracing=tracing.service_config(settings),
        logging={"access": {"enabled": settings.access_log_enabled}},
    )(cls)
