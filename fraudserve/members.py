"""One member model in every version it is asked for, scoring rows that carry their version code.

The one coded scorer: the runner services (runners/factory.py) and the API worker's in-process placement
(FRAUD_MEMBER_PLACEMENT=inprocess, ``InProcessMembers``) both score through ``VersionedMember``.

Rows come with ONE extra leading column, the version code of each row (``fraudserve.rollout.versions``).
A batch may mix versions (canary, shadow and stable requests batch together): rows are grouped by code,
each group is scored with that version's model (loaded from the store on first use, hash-checked, then
kept) and the scores come back in row order. A group that fails (unknown version, an artifact failing its
hash check) gets NaN scores and is logged, and the caller turns NaN into an error for its own request only:
a batch is shared, so raising would fail the other versions' requests too (a broken shadow would fail
served traffic).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

import bentoml
import numpy as np

from fraudserve.ensemble import EnsembleSpec
from fraudserve.errors import InvalidInput, ModelStoreError
from fraudserve.metrics import RUNNER_BATCH_ROWS, RUNNER_LATENCY, labelled
from fraudserve.rollout.versions import version_code
from fraudserve.runtime import MemberModel, Runtime
from fraudserve.runtime import load as load_member
from models import store

log = logging.getLogger(__name__)


class VersionedMember:
    """Member ``kind`` (store name ``name``): ``primary`` is the start-up version's model."""

    def __init__(
        self,
        kind: str,
        name: str,
        primary: bentoml.Model,
        *,
        preferred: Runtime,
        threads: int,
    ) -> None:
        self.kind = kind
        self.name = name
        self.preferred = preferred
        self.threads = threads
        self.model = load_member(primary, preferred, threads=threads)
        self.models: dict[float, MemberModel] = {version_code(str(primary.tag.version)): self.model}
        self._loading = threading.Lock()

    @property
    def runtime(self) -> str:
        return self.model.runtime

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
        for model in bentoml.models.list(self.name):
            if version_code(str(model.tag.version)) == code:
                return load_member(model, self.preferred, threads=self.threads)
        raise ModelStoreError(f"no {self.name} model in the store has version code {code:.0f}")

    def score_coded(self, coded: np.ndarray, path: str) -> np.ndarray:
        """One float64 score per row of ``coded`` ([version code, features...]); NaN where its version failed."""
        started = time.perf_counter()
        coded = np.asarray(coded, dtype=np.float64)
        if coded.ndim != 2 or coded.shape[1] < 2:
            raise InvalidInput(f"expected [version code, features...] rows, got shape {coded.shape}")
        codes, matrix = coded[:, 0], coded[:, 1:]
        result = np.full(len(coded), np.nan, dtype=np.float64)
        runtimes: set[str] = set()
        if len(codes) == 0:
            return result
        first = codes[0]
        groups = [first] if (codes == first).all() else np.unique(codes).tolist()
        for code in groups:
            try:
                member = self.model_for(float(code))
                if len(groups) == 1:
                    result[:] = member.score(matrix)
                else:
                    rows = codes == code
                    result[rows] = member.score(matrix[rows])
                runtimes.add(member.runtime)
            except Exception:  # one version's failure must not fail the other versions' rows of the batch
                log.exception("%s: scoring version code %.0f failed; its rows get NaN", self.name, code)
        # A batch mixing versions served by different runtimes is labelled "onnx+sklearn".
        label = "+".join(sorted(runtimes)) or "none"
        labelled(RUNNER_LATENCY, self.kind, path, label).observe(time.perf_counter() - started)
        labelled(RUNNER_BATCH_ROWS, self.kind, path, label).observe(len(coded))
        return result


class InProcessMembers:
    """The members scored in the API worker itself: the entry batcher's call when FRAUD_MEMBER_PLACEMENT=inprocess.

    A batch of up to FRAUD_ENTRY_MAX_BATCH_ROWS rows costs well under a millisecond in onnxruntime, less than
    one hop to a runner process, so it runs on the event loop; bulk requests still go to the runners.
    """

    def __init__(self, members: Mapping[str, VersionedMember]) -> None:
        self.members = dict(members)

    @classmethod
    def load(cls, spec: EnsembleSpec, *, preferred: Runtime, threads: int) -> InProcessMembers:
        """The members of ``spec`` (the start-up version); other versions load on first use."""
        return cls(
            {
                kind: VersionedMember(
                    kind,
                    store.model_name(spec.prefix, kind),
                    bentoml.models.get(spec.tag(kind)),
                    preferred=preferred,
                    threads=threads,
                )
                for kind in spec.members
            }
        )

    async def call_coded(self, member: str, coded: np.ndarray) -> np.ndarray:
        return self.members[member].score_coded(coded, "inprocess")
