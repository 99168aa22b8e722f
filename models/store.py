"""Saving and loading models in the BentoML model store, with metadata and an integrity check.

Each training run writes one ensemble and its member models under ONE version string, so a
version names a consistent set. Artifacts are joblib files; their SHA-256 is recorded in the
metadata at save time and checked before every load, so only what we wrote is unpickled.
A member may also hold its ONNX graph (``model.onnx``, exported and parity-checked at training
time, see models/onnx_export.py); metadata ``onnx`` records its sha256 and parity, or why there
is none. fraudserve/runtime.py decides which of the two artifacts a member is served with.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bentoml
import joblib

from fraudserve.ensemble import EnsembleSpec
from fraudserve.errors import ModelStoreError
from fraudserve.schema import FeatureSchema
from models import registry

if TYPE_CHECKING:
    from models.onnx_export import OnnxExport

ENSEMBLE = "ensemble"
ARTIFACT = "model.joblib"
ONNX_ARTIFACT = "model.onnx"
ONNX = "onnx"  # metadata key: {"file", "sha256", "parity"} or {"reason"[, "parity"]}
COMBINER = "combiner.json"


def model_name(prefix: str, kind: str) -> str:
    return f"{prefix}_{kind}"


def save_member(
    prefix: str,
    kind: str,
    version: str,
    estimator: Any,
    metadata: dict[str, Any],
    onnx: OnnxExport | None = None,
) -> bentoml.Tag:
    tag = bentoml.Tag(model_name(prefix, kind), version)
    with bentoml.models.create(tag, module="models.store", metadata=metadata, labels={"kind": kind}) as model:
        path = Path(model.path) / ARTIFACT
        joblib.dump(estimator, path)
        model.info.metadata["sha256"] = _sha256(path)
        # Always written, so metadata copied from another member never claims an ONNX file this one lacks.
        model.info.metadata[ONNX] = _save_onnx(Path(model.path), onnx)
    return tag


def _save_onnx(root: Path, onnx: OnnxExport | None) -> dict[str, Any]:
    if onnx is None:
        return {"reason": "saved without an ONNX export"}
    info: dict[str, Any] = {}
    if onnx.graph is None:
        info["reason"] = onnx.reason or "not exported"
    else:
        path = root / ONNX_ARTIFACT
        path.write_bytes(onnx.graph)
        info.update(file=ONNX_ARTIFACT, sha256=_sha256(path))
    if onnx.parity is not None:
        info["parity"] = onnx.parity.to_dict()
    return info


def save_ensemble(prefix: str, version: str, combiner: dict[str, Any], metadata: dict[str, Any]) -> bentoml.Tag:
    tag = bentoml.Tag(model_name(prefix, ENSEMBLE), version)
    with bentoml.models.create(tag, module="models.store", metadata=metadata, labels={"kind": ENSEMBLE}) as model:
        path = Path(model.path) / COMBINER
        path.write_text(json.dumps(combiner, indent=2, sort_keys=True))
        model.info.metadata["sha256"] = _sha256(path)
    return tag


def resolve_version(prefix: str, version: str) -> str:
    """Turn ``latest`` or a registry alias (``stable``, ``canary``) into a concrete version.

    ``stable`` falls back to the newest ensemble while the registry does not define it.
    """
    if version in registry.ALIASES:
        aliased = registry.resolve_alias(prefix, version)
        if aliased is None and version != "stable":
            raise ModelStoreError(f"alias {version!r} is not set; `python -m models.registry promote V --to {version}`")
        version = aliased or "latest"
    try:
        return str(bentoml.models.get(f"{model_name(prefix, ENSEMBLE)}:{version}").tag.version)
    except bentoml.exceptions.NotFound:
        raise ModelStoreError(
            f"no model {model_name(prefix, ENSEMBLE)}:{version} in the store; run `make models` first"
        ) from None
    except (ValueError, bentoml.exceptions.BentoMLException) as exc:  # not even a valid BentoML tag
        raise ModelStoreError(f"{version!r} is not a valid model version: {exc}") from None


def load_member(model: bentoml.Model) -> Any:
    path = Path(model.path) / ARTIFACT
    _verify(model, path)
    return joblib.load(path)


def load_ensemble(prefix: str, version: str) -> EnsembleSpec:
    concrete = resolve_version(prefix, version)
    model = bentoml.models.get(f"{model_name(prefix, ENSEMBLE)}:{concrete}")
    path = Path(model.path) / COMBINER
    _verify(model, path)
    combiner = json.loads(path.read_text())
    meta = model.info.metadata
    return EnsembleSpec(
        version=concrete,
        prefix=prefix,
        schema=FeatureSchema.model_validate_json(str(meta["schema"])),
        members=tuple(combiner["members"]),
        weights={k: float(v) for k, v in combiner["weights"].items()},
        links={k: str(v) for k, v in combiner["links"].items()},
        intercept=float(combiner["intercept"]),
        threshold=float(combiner["threshold"]),
        metrics=_as_dict(meta.get("metrics", {})),
    )


def _as_dict(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def read_verified(model: bentoml.Model, name: str, expected: str | None) -> bytes:
    """The bytes of artifact ``name``, after checking them against their recorded sha256."""
    path = Path(model.path) / name
    if not path.is_file():
        raise ModelStoreError(f"{model.tag}: artifact {name} is missing")
    data = path.read_bytes()
    if not expected or hashlib.sha256(data).hexdigest() != expected:
        raise ModelStoreError(f"{model.tag}: artifact {name} does not match its recorded sha256; refusing to load")
    return data


def _verify(model: bentoml.Model, path: Path) -> None:
    expected = model.info.metadata.get("sha256")
    if not path.is_file():
        raise ModelStoreError(f"{model.tag}: artifact {path.name} is missing")
    if not expected or _sha256(path) != expected:
        raise ModelStoreError(f"{model.tag}: artifact hash does not match its recorded sha256; refusing to load")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
