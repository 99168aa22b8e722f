"""Builds a runner service for one member model.

Each runner loads its model from the store by tag in ``__init__`` and exposes two APIs:
``score`` is batchable (BentoML's adaptive micro-batching, sized from settings) and
``score_bulk`` is not, so that a large request is never shed by the ``max_latency_ms``
deadline of the batcher (DESIGN.md: the deadline kills big requests part-way).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import bentoml
import numpy as np
from threadpoolctl import threadpool_limits

from fraudserve.metrics import RUNNER_BATCH_ROWS, RUNNER_LATENCY
from fraudserve.settings import get_settings
from models import store

Scorer = Callable[[Any, np.ndarray], np.ndarray]


def build_runner(kind: str, scorer: Scorer) -> Any:
    settings = get_settings()
    version = store.resolve_version(settings.model_prefix, settings.model_version)
    tag = f"{store.model_name(settings.model_prefix, kind)}:{version}"

    def _score(self: Any, features: np.ndarray, path: str) -> np.ndarray:
        started = time.perf_counter()
        result = np.asarray(scorer(self.model, np.asarray(features, dtype=np.float64)), dtype=np.float64)
        RUNNER_LATENCY.labels(model=kind, path=path).observe(time.perf_counter() - started)
        RUNNER_BATCH_ROWS.labels(model=kind, path=path).observe(len(features))
        return result

    class Runner:
        model_ref = bentoml.models.BentoModel(tag)

        def __init__(self) -> None:
            threadpool_limits(limits=settings.runner_threads)
            self.model = store.load_member(self.model_ref)
            self.tag = tag

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
    return bentoml.service(
        name=f"{settings.model_prefix}_{kind}_runner",
        workers=settings.runner_workers,
        traffic={"timeout": settings.runner_timeout_s},
        # BentoML 1.4.39 recycles the caller's connection every 100 requests and closes it
        # under in-flight requests ("Connector is closed" -> 500 under load): never recycle.
        runner_connection={"max_requests": 2**31 - 1, "max_age": 10.0 * 365 * 24 * 3600},
    )(Runner)
