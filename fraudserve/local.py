"""The inference core with the member models loaded in this process (batch and stream scoring).

Same ensemble, same features, same combine step as the served bundle; only the hop to the
runner services is skipped.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import bentoml
import numpy as np

from fraudserve.ensemble import EnsembleSpec
from fraudserve.inference import InferenceCore
from fraudserve.settings import Settings, get_settings
from models import store
from models.members import SCORE


class LocalScorer:
    """A ``MemberScorer`` over estimators held in memory.

    ``estimators`` are those of the primary version; a call naming another ``version`` loads
    that version's member from the store (hash-checked) on first use and keeps it.
    """

    def __init__(self, estimators: Mapping[str, Any], *, prefix: str = "fraud", version: str | None = None) -> None:
        self.estimators = dict(estimators)
        self.prefix = prefix
        self.version = version
        self._other: dict[tuple[str, str], Any] = {}
        self._loading = threading.Lock()

    def estimator(self, member: str, version: str | None = None) -> Any:
        if version is None or version == self.version:
            return self.estimators[member]
        key = (version, member)
        if key not in self._other:
            with self._loading:
                if key not in self._other:
                    self._other[key] = store.load_member(bentoml.models.get(f"{self.prefix}_{member}:{version}"))
        return self._other[key]

    def score_sync(self, member: str, features: np.ndarray, version: str | None = None) -> np.ndarray:
        return SCORE[member](self.estimator(member, version), features)

    async def __call__(
        self, member: str, features: np.ndarray, *, bulk: bool, version: str | None = None
    ) -> np.ndarray:
        return self.score_sync(member, features, version)

    def score_all(self, spec: EnsembleSpec, features: np.ndarray) -> dict[str, np.ndarray]:
        return {m: self.score_sync(m, features) for m in spec.members}


def load_local(settings: Settings | None = None, version: str | None = None) -> tuple[EnsembleSpec, LocalScorer]:
    settings = settings or get_settings()
    spec = store.load_ensemble(settings.model_prefix, version or settings.model_version)
    estimators = {m: store.load_member(bentoml.models.get(spec.tag(m))) for m in spec.members}
    return spec, LocalScorer(estimators, prefix=spec.prefix, version=spec.version)


def local_core(settings: Settings | None = None, version: str | None = None) -> InferenceCore:
    settings = settings or get_settings()
    spec, scorer = load_local(settings, version)
    return InferenceCore(
        spec,
        scorer,
        max_rows=settings.max_rows_per_request,
        bulk_rows_threshold=settings.bulk_rows_threshold,
        threshold=settings.decision_threshold,
    )
