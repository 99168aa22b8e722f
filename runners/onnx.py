"""ONNX runners: the edge bundle's member graphs served like the scikit-learn runners.

Same API as ``runners/factory.py`` (batchable ``score``, unbatched ``score_bulk``, ``version``;
rows are ``[version code, features...]``), so one can stand in for a scikit-learn runner, but
the model comes from an edge bundle (``fraud-edge export``, FRAUD_EDGE_BUNDLE_DIR) and runs in
onnxruntime. They are NOT composed
into service.py's entry service; serve one on its own, e.g.

    FRAUD_EDGE_BUNDLE_DIR=dist/edge bentoml serve runners.onnx:HgbOnnxRunner

or build it in-process as benchmarks/edge.py does (``HgbOnnxRunner.inner(bundle_dir)``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import bentoml
import numpy as np

from fraudserve.edge.scorer import EdgeBundle
from fraudserve.errors import InvalidInput, ModelStoreError
from fraudserve.metrics import RUNNER_BATCH_ROWS, RUNNER_LATENCY
from fraudserve.rollout.versions import version_code
from fraudserve.settings import get_settings
from runners.factory import runner_service


def build_onnx_runner(kind: str) -> Any:
    settings = get_settings()
    label = f"{kind}_onnx"

    def _score(self: Any, features: np.ndarray, path: str) -> np.ndarray:
        started = time.perf_counter()
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] < 2:
            raise InvalidInput(f"expected [version code, features...] rows, got shape {features.shape}")
        if np.any(features[:, 0] != self.code):
            # A bundle holds one version; canary/shadow routing to others needs the scikit-learn runners.
            raise ModelStoreError(f"this ONNX runner serves version {self.bundle.version} only")
        result = self.bundle.member_scores(features[:, 1:])[kind]
        RUNNER_LATENCY.labels(model=label, path=path).observe(time.perf_counter() - started)
        RUNNER_BATCH_ROWS.labels(model=label, path=path).observe(len(features))
        return result

    class OnnxRunner:
        def __init__(self, bundle_dir: Path | None = None) -> None:
            # BentoML builds it without arguments (the bundle from settings); benchmarks pass one.
            bundle_dir = bundle_dir or settings.edge_bundle_dir
            if bundle_dir is None:
                raise ModelStoreError("FRAUD_EDGE_BUNDLE_DIR is not set; export one with `fraud-edge export --out DIR`")
            # The bundle's sha256 manifest is checked here, as on a device.
            self.bundle = EdgeBundle(bundle_dir, threads=settings.runner_threads, only=[kind])
            self.tag = f"{self.bundle.manifest['prefix']}_{kind}:{self.bundle.version}"
            self.code = version_code(self.bundle.version)

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
            return str(self.bundle.version)

    OnnxRunner.__name__ = OnnxRunner.__qualname__ = f"{kind.capitalize()}OnnxRunner"
    return runner_service(OnnxRunner, f"{settings.model_prefix}_{kind}_onnx_runner")


HgbOnnxRunner = build_onnx_runner("hgb")
LogregOnnxRunner = build_onnx_runner("logreg")
IforestOnnxRunner = build_onnx_runner("iforest")
