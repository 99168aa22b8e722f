"""The inference core with the member models loaded in this process (batch and stream scoring).

Same ensemble, same features, same combine step and the same member runtime (FRAUD_MEMBER_RUNTIME,
fraudserve/runtime.py) as the served bundle; only the hop to the runner services is skipped.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from typing import Any

import bentoml
import numpy as np

from fraudserve import runtime
from fraudserve.ensemble import EnsembleSpec
from fraudserve.inference import InferenceCore
from fraudserve.settings import Settings, get_settings
from models import store


class LocalScorer:
    """A ``MemberScorer`` over member models held in memory.

    ``members`` are those of the primary version; a call naming another ``version`` loads that
    version's member from the store (hash-checked, same runtime choice) on first use and keeps it.
    """

    def __init__(
        self,
        members: Mapping[str, runtime.MemberModel],
        *,
        prefix: str = "fraud",
        version: str | None = None,
        preferred: runtime.Runtime = "onnx",
        threads: int = 1,
    ) -> None:
        self.members = dict(members)
        self.prefix = prefix
        self.version = version
        self.preferred = preferred
        self.threads = threads
        self._other: dict[tuple[str, str], runtime.MemberModel] = {}
        self._estimators: dict[str, Any] | None = None
        self._loading = threading.Lock()

    @property
    def runtimes(self) -> dict[str, str]:
        """Member -> runtime of the primary version."""
        return {m: model.runtime for m, model in self.members.items()}

    @property
    def estimators(self) -> dict[str, Any]:
        """The scikit-learn estimators of the primary version (hash-checked, loaded on first use): the
        reference that exports are checked against, whatever runtime scores."""
        if self._estimators is None:
            with self._loading:
                if self._estimators is None:
                    self._estimators = {m: store.load_member(self._model(m, self.version)) for m in self.members}
        return self._estimators

    def member(self, member: str, version: str | None = None) -> runtime.MemberModel:
        if version is None or version == self.version:
            return self.members[member]
        key = (version, member)
        if key not in self._other:
            with self._loading:
                if key not in self._other:
                    model = self._model(member, version)
                    self._other[key] = runtime.load(model, self.preferred, threads=self.threads)
        return self._other[key]

    def score_sync(self, member: str, features: np.ndarray, version: str | None = None) -> np.ndarray:
        return self.member(member, version).score(features)

    async def __call__(
        self, member: str, features: np.ndarray, *, bulk: bool, version: str | None = None
    ) -> np.ndarray:
        return self.score_sync(member, features, version)

    def score_all(self, spec: EnsembleSpec, features: np.ndarray) -> dict[str, np.ndarray]:
        return {m: self.score_sync(m, features) for m in spec.members}

    def _model(self, member: str, version: str | None) -> bentoml.Model:
        return bentoml.models.get(f"{self.prefix}_{member}:{version or 'latest'}")


def load_local(settings: Settings | None = None, version: str | None = None) -> tuple[EnsembleSpec, LocalScorer]:
    settings = settings or get_settings()
    spec = store.load_ensemble(settings.model_prefix, version or settings.model_version)
    preferred, threads = settings.member_runtime, settings.runner_threads
    members = {m: runtime.load(bentoml.models.get(spec.tag(m)), preferred, threads=threads) for m in spec.members}
    return spec, LocalScorer(members, prefix=spec.prefix, version=spec.version, preferred=preferred, threads=threads)


def local_core(settings: Settings | None = None, version: str | None = None) -> InferenceCore:
    settings = settings or get_settings()
    spec, scorer = load_local(settings, version)
    return InferenceCore(
        spec,
        scorer,
        max_rows=settings.max_rows_per_request,
        bulk_rows_threshold=settings.bulk_rows_threshold,
        threshold=settings.decision_threshold,
        runtimes=functools.partial(runtime.describe_version, spec.prefix, preferred=settings.member_runtime),
    )
