"""A Seldon MLServer custom runtime serving the fraud ensemble, the peer of benchmarks/online.py.

Runs in MLServer's own venv (scripts/mlserver.sh), which does not have this project: it reads the
BentoML model store through fraud_store.py (same layout, same sha256 checks, same ONNX-or-
scikit-learn choice as the bundle) and repeats the little the project does to score: the member
scores of models/members.py and the combine of fraudserve/ensemble.py.

A member is scored with onnxruntime (1 intra-op thread) on its verified ``model.onnx``, as the
bundle does, and with scikit-learn (1 BLAS/OpenMP thread) where the bundle would fall back to it;
the choice is printed at load. Inputs are the bundle's OIP form: one tensor per feature, shape [n]
(categories as BYTES strings). Outputs: ``fraud_probability``, ``is_fraud`` and ``<member>_score``,
as the bundle answers.

model-settings.json ``parameters``: ``version`` (a store version or ``latest``), and in ``extra``:
``bentoml_home`` (default $BENTOML_HOME, else ~/bentoml), ``prefix`` (default ``fraud``),
``member_runtime`` (``onnx``, the bundle's default, or ``sklearn``), ``threads`` (default 1).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import fraud_store
import joblib
import numpy as np
from mlserver import MLModel
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput
from threadpoolctl import threadpool_limits

logger = logging.getLogger("fraud_runtime")
_EPS = 1e-6


class BadInput(MLServerError):
    def __init__(self, message: str) -> None:
        super().__init__(message, status_code=400)


class OnnxMember:
    runtime = "onnx"

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.dtype = np.float64 if first.type == "tensor(double)" else np.float32

    def score(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: x.astype(self.dtype, copy=False)})[0]
        return np.asarray(out, dtype=np.float64).reshape(-1)


class SklearnMember:
    runtime = "sklearn"

    def __init__(self, path: Path, link: str) -> None:
        self.estimator = joblib.load(path)
        self.link = link

    def score(self, x: np.ndarray) -> np.ndarray:
        if self.link == "logit":
            return np.asarray(self.estimator.predict_proba(x)[:, 1], dtype=np.float64)
        # score_samples is higher for normal rows; the ensemble reads "higher = stranger".
        return np.asarray(-self.estimator.score_samples(x), dtype=np.float64)


class FraudEnsembleRuntime(MLModel):
    async def load(self) -> bool:
        params = self.settings.parameters
        extra: dict[str, Any] = dict((params.extra if params else None) or {})
        home = Path(extra.get("bentoml_home") or os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")
        prefix = str(extra.get("prefix") or "fraud")
        preferred = str(extra.get("member_runtime") or "onnx")
        threads = int(extra.get("threads") or 1)
        version = fraud_store.resolve_version(home, prefix, (params.version if params else None) or "latest")

        combiner = fraud_store.ensemble(home, prefix, version)
        self.features: list[dict[str, Any]] = list(combiner["schema"]["features"])
        self.categories = {
            f["name"]: {c: float(i) for i, c in enumerate(f["categories"])}
            for f in self.features
            if f["kind"] == "category"
        }
        self.members: list[str] = list(combiner["members"])
        self.weights = {k: float(v) for k, v in combiner["weights"].items()}
        self.links = {k: str(v) for k, v in combiner["links"].items()}
        self.intercept = float(combiner["intercept"])
        self.threshold = float(combiner["threshold"])

        # The bundle's runners use one thread each; so does this, whichever library scores. This call
        # covers BLAS; OpenMP (HGB) is per thread and set by OMP_NUM_THREADS (benchmarks/peers.py).
        threadpool_limits(limits=threads)
        self.scorers: dict[str, OnnxMember | SklearnMember] = {}
        reasons: dict[str, str] = {}
        for member in self.members:
            folder = fraud_store.model_dir(home, prefix, member, version)
            choice = fraud_store.choose(folder, preferred)
            if choice.runtime == "onnx":
                try:
                    self.scorers[member] = OnnxMember(choice.path, threads)
                    continue
                except Exception as exc:  # noqa: BLE001 - onnxruntime's own errors; the bundle falls back too
                    choice = fraud_store.sklearn_choice(folder, f"onnxruntime cannot load {choice.path.name}: {exc}")
            if choice.reason:
                reasons[member] = choice.reason
            self.scorers[member] = SklearnMember(choice.path, self.links[member])
        self.store_version = version
        runtimes = {m: s.runtime for m, s in self.scorers.items()}
        # online.py reads this line from the server log into its results.
        print(
            f"FRAUD_RUNTIME version={version} members={json.dumps(runtimes)} reasons={json.dumps(reasons)}", flush=True
        )
        logger.info("fraud ensemble %s loaded: %s %s", version, runtimes, reasons)
        return True

    def _matrix(self, payload: InferenceRequest) -> np.ndarray:
        by_name = {i.name: i for i in payload.inputs}
        columns: list[np.ndarray] = []
        for f in self.features:
            tensor = by_name.get(f["name"])
            if tensor is None:
                raise BadInput(f"missing input {f['name']!r}")
            data = getattr(tensor.data, "root", tensor.data)
            if f["kind"] == "category":
                table = self.categories[f["name"]]
                try:
                    codes = [table[v.decode() if isinstance(v, bytes) else v] for v in data]
                    columns.append(np.asarray(codes, dtype=np.float64))
                except KeyError as exc:
                    raise BadInput(f"{f['name']}: unknown category {exc.args[0]!r}") from None
            else:
                columns.append(np.asarray(data, dtype=np.float64).reshape(-1))
        return np.column_stack(columns).astype(np.float64, copy=False)

    def _combine(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        z = np.full(len(next(iter(scores.values()))), self.intercept, dtype=np.float64)
        for member, weight in self.weights.items():
            s = scores[member]
            if self.links[member] == "logit":
                p = np.clip(s, _EPS, 1.0 - _EPS)
                s = np.log(p / (1.0 - p))
            z += weight * s
        return 1.0 / (1.0 + np.exp(-z))

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = self._matrix(payload)
        scores = {m: s.score(x) for m, s in self.scorers.items()}
        probability = self._combine(scores)
        # Shape [n] as the bundle answers (NumpyCodec would add a dimension: [n, 1]).
        outputs = [
            _output("fraud_probability", "FP64", probability),
            _output("is_fraud", "BOOL", probability >= self.threshold),
            *(_output(f"{m}_score", "FP64", s) for m, s in scores.items()),
        ]
        return InferenceResponse(id=payload.id, model_name=self.name, model_version=self.store_version, outputs=outputs)


def _output(name: str, datatype: str, values: np.ndarray) -> ResponseOutput:
    return ResponseOutput(name=name, datatype=datatype, shape=[len(values)], data=values.tolist())
