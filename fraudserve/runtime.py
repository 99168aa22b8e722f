"""The runtime a stored member model is served with, and the loaded member behind one ``score`` call.

A member in the store holds its scikit-learn estimator (``model.joblib``) and, when training
converted it faithfully, its ONNX graph (``model.onnx``, models/onnx_export.py). ONNX is
preferred (FRAUD_MEMBER_RUNTIME=onnx): it is 46-114x cheaper per call at 1-16 rows and returns
the same scores to ~1e-15. scikit-learn serves a member whose graph is not usable (not exported,
no passing parity check, missing, failing its sha256, refused by onnxruntime) and every member
when FRAUD_MEMBER_RUNTIME=sklearn. A tampered ``model.onnx`` therefore falls back to the joblib,
which is itself hash-checked before it is unpickled (store.load_member), so a member is still
served only from bytes we wrote. Runners, the in-process scorer and the entry service's report
all decide with ``choose``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import bentoml
import numpy as np

from fraudserve.errors import ModelStoreError
from models import store
from models.members import SCORE

Runtime = Literal["onnx", "sklearn"]
RUNTIMES: tuple[Runtime, ...] = ("onnx", "sklearn")

log = logging.getLogger(__name__)
_warned: set[str] = set()
_warned_lock = threading.Lock()


@dataclass(frozen=True)
class RuntimeChoice:
    runtime: Runtime
    reason: str | None = None  # why the preferred runtime is not the one used


class MemberModel(Protocol):
    """A loaded member: ``score`` returns models/members.py's SCORE (float64 [n]) for a feature matrix."""

    runtime: str
    reason: str | None

    def score(self, matrix: np.ndarray) -> np.ndarray: ...


class SklearnModel:
    runtime = "sklearn"

    def __init__(self, estimator: Any, kind: str, *, reason: str | None = None) -> None:
        self.estimator = estimator
        self.kind = kind
        self.reason = reason
        self._score = SCORE[kind]

    def score(self, matrix: np.ndarray) -> np.ndarray:
        return np.asarray(self._score(self.estimator, matrix), dtype=np.float64)


class OnnxModel:
    runtime = "onnx"

    def __init__(self, graph: bytes, *, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # Several runners (and their batches) share the cores: one thread each, as for scikit-learn.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        first = self.session.get_inputs()[0]
        self.input_name: str = first.name
        self.input_dtype: type[np.floating[Any]] = np.float64 if first.type == "tensor(double)" else np.float32
        self.reason: str | None = None

    def score(self, matrix: np.ndarray) -> np.ndarray:
        features = np.ascontiguousarray(matrix, dtype=self.input_dtype)
        (scores, *_) = self.session.run(None, {self.input_name: features})
        return np.asarray(scores, dtype=np.float64).reshape(-1)


def choose(model: bentoml.Model, preferred: Runtime) -> RuntimeChoice:
    """The runtime ``model`` is served with when ``preferred`` is asked for; reads no model into memory."""
    return _choose(model, preferred)[0]


def load(model: bentoml.Model, preferred: Runtime, *, threads: int = 1) -> MemberModel:
    """The member ``model`` loaded in the runtime ``choose`` gives (scikit-learn if ONNX fails to load)."""
    choice, graph = _choose(model, preferred)
    if graph is not None:
        try:
            return OnnxModel(graph, threads=threads)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types; the joblib still serves
            choice = RuntimeChoice("sklearn", f"onnxruntime cannot load {store.ONNX_ARTIFACT}: {_first_line(exc)}")
    if choice.reason is not None:
        _warn_once(model, choice.reason)
    return SklearnModel(store.load_member(model), _kind(model), reason=choice.reason)


def choices(prefix: str, version: str, preferred: Runtime) -> dict[str, RuntimeChoice]:
    """``choose`` for every member of an ensemble version (or alias), without loading any model."""
    spec = store.load_ensemble(prefix, version)
    out = {}
    for member in spec.members:
        try:
            model = bentoml.models.get(spec.tag(member))
        except bentoml.exceptions.NotFound:
            raise ModelStoreError(f"no model {spec.tag(member)} in the store") from None
        out[member] = choose(model, preferred)
    return out


def describe_version(prefix: str, version: str, preferred: Runtime) -> dict[str, str]:
    """Member -> runtime it is served with (``onnx`` / ``sklearn``), e.g. for /model and metrics."""
    return {member: choice.runtime for member, choice in choices(prefix, version, preferred).items()}


def _choose(model: bentoml.Model, preferred: Runtime) -> tuple[RuntimeChoice, bytes | None]:
    """The choice and, for ONNX, the graph's bytes as hash-checked (what gets loaded is what was checked)."""
    if preferred == "sklearn":
        return RuntimeChoice("sklearn"), None
    if preferred != "onnx":
        raise ValueError(f"unknown member runtime {preferred!r}; expected one of {list(RUNTIMES)}")
    info = model.info.metadata.get(store.ONNX)
    if not isinstance(info, dict):
        return RuntimeChoice("sklearn", "no ONNX export recorded (saved before members had one)"), None
    if not info.get("file"):
        return RuntimeChoice("sklearn", f"no ONNX export: {info.get('reason') or 'no reason recorded'!s}"), None
    parity = info.get("parity")
    if not isinstance(parity, dict) or parity.get("ok") is not True:
        return RuntimeChoice("sklearn", "the ONNX export has no passing parity check recorded"), None
    try:
        graph = store.read_verified(model, store.ONNX_ARTIFACT, str(info.get("sha256") or ""))
    except ModelStoreError as exc:
        return RuntimeChoice("sklearn", exc.message), None
    return RuntimeChoice("onnx"), graph


def _kind(model: bentoml.Model) -> str:
    return str(model.info.labels.get("kind") or str(model.tag.name).rsplit("_", 1)[-1])


def _warn_once(model: bentoml.Model, reason: str) -> None:
    key = str(model.tag)
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(
        "member %s version %s is served with scikit-learn, not ONNX: %s", model.tag.name, model.tag.version, reason
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
