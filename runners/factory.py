"""Builds the runner service of one member model: the one runner builder, for either runtime.

Each runner loads its model from the store by tag in ``__init__`` in the runtime that
``fraudserve.runtime`` chooses (FRAUD_MEMBER_RUNTIME: the member's stored ONNX graph by default,
scikit-learn as setting or fallback; per version, as each version is loaded) and exposes two APIs:
``score`` is batchable (BentoML's adaptive micro-batching, sized from settings) and
``score_bulk`` is not, so that a large request is never shed by the ``max_latency_ms``
deadline of the batcher (docs/architecture.md: the deadline kills big requests part-way).

Both take the encoded features with ONE extra leading column, the version code of each row, and
score them through ``fraudserve.members.VersionedMember`` (a batch may mix versions; a version that
fails gets NaN for its rows only).
``model_ref`` stays the start-up version, so ``bentoml build`` packages that one only.
"""

from __future__ import annotations

from typing import Any

import bentoml
import numpy as np
from threadpoolctl import threadpool_limits

from fraudserve import service_options
from fraudserve.members import VersionedMember
from fraudserve.runtime import Runtime
from fraudserve.settings import get_settings
from models import store


def build_runner(kind: str, runtime: Runtime | None = None) -> Any:
    """The runner of member ``kind``; ``runtime`` overrides FRAUD_MEMBER_RUNTIME (benchmarks build both)."""
    settings = get_settings()
    preferred: Runtime = runtime or settings.member_runtime
    version = store.resolve_version(settings.model_prefix, settings.model_version)
    name = store.model_name(settings.model_prefix, kind)
    tag = f"{name}:{version}"

    class Runner:
        model_ref = bentoml.models.BentoModel(tag)

        def __init__(self) -> None:
            threadpool_limits(limits=settings.runner_threads)
            self.member = VersionedMember(
                kind, name, self.model_ref, preferred=preferred, threads=settings.runner_threads
            )
            self.tag = tag

        @bentoml.on_startup
        def settle_heap(self) -> None:
            service_options.freeze_heap()

        @property
        def runtime(self) -> str:
            return self.member.runtime

        @bentoml.api(
            batchable=settings.batching_enabled,
            max_batch_size=settings.max_batch_size_rows,
            max_latency_ms=settings.max_latency_ms,
        )
        def score(self, features: np.ndarray) -> np.ndarray:
            return self.member.score_coded(features, "batched" if settings.batching_enabled else "unbatched")

        @bentoml.api
        def score_bulk(self, features: np.ndarray) -> np.ndarray:
            return self.member.score_coded(features, "bulk")

        @bentoml.api
        def version(self) -> str:
            return version

    Runner.__name__ = Runner.__qualname__ = f"{kind.capitalize()}Runner"
    return runner_service(Runner, f"{settings.model_prefix}_{kind}_runner")


def runner_service(cls: type, name: str) -> Any:
    """Declare a runner class as a BentoML service, with the options every runner needs."""
    settings = get_settings()
    service_options.prepare_process(settings)
    return bentoml.service(
        name=name,
        workers=settings.runner_workers,
        traffic={"timeout": settings.runner_timeout_s},
        # BentoML 1.4.39 recycles the caller's connection every 100 requests and closes it
        # under in-flight requests ("Connector is closed" -> 500 under load): never recycle.
        runner_connection={"max_requests": 2**31 - 1, "max_age": 10.0 * 365 * 24 * 3600},
        **service_options.common_options(settings),  # tracing, access log
    )(cls)
