"""The BentoML model store as files, for the MLServer peer: which version, which artifact, verified how.

Standard library + PyYAML only, so both MLServer's venv (fraud_runtime.py) and the project's
(benchmarks/online.py, to report what the peer will load) import it. It repeats the project's
rules rather than importing them, since MLServer's venv does not have the project:
- layout (models/store.py): ``<home>/models/<prefix>_<kind>/<version>/`` with ``model.yaml``
  (metadata), ``model.joblib`` (sha256 in metadata ``sha256``) and, for a member exported to ONNX,
  ``model.onnx`` (metadata ``onnx``: ``{"file", "sha256", "parity": {"ok", ...}}`` or ``{"reason"}``);
  ``<prefix>_ensemble/<version>/combiner.json``, the feature schema in its metadata ``schema``;
- runtime choice (fraudserve/runtime.py): ONNX when asked for and the graph is recorded, has a
  passing parity check and matches its sha256; scikit-learn otherwise, with the reason.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

JOBLIB = "model.joblib"
ONNX = "model.onnx"
COMBINER = "combiner.json"


class StoreError(Exception):
    pass


@dataclass(frozen=True)
class Choice:
    runtime: str  # "onnx" | "sklearn"
    path: Path  # the verified artifact to load
    reason: str | None = None  # why not ONNX, when ONNX was asked for


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def metadata(folder: Path) -> dict[str, Any]:
    info = yaml.safe_load((folder / "model.yaml").read_text()) or {}
    return dict(info.get("metadata") or {})


def verified(folder: Path, name: str, expected: object) -> Path:
    """``folder/name`` after checking it against its recorded sha256 (StoreError if missing or different)."""
    path = folder / name
    if not path.is_file():
        raise StoreError(f"{folder}: {name} is missing")
    if not expected or sha256_file(path) != str(expected):
        raise StoreError(f"{folder}: {name} does not match its recorded sha256; refusing to load")
    return path


def model_dir(home: Path, prefix: str, kind: str, version: str) -> Path:
    return home / "models" / f"{prefix}_{kind}" / version


def resolve_version(home: Path, prefix: str, version: str) -> str:
    if version == "latest":
        return (home / "models" / f"{prefix}_ensemble" / "latest").read_text().strip()
    return version


def choose(folder: Path, preferred: str = "onnx") -> Choice:
    """The artifact a member is served with, as the bundle chooses it; reads (hashes) but does not load it."""
    meta = metadata(folder)
    reason = None
    if preferred == "onnx":
        info = meta.get("onnx")
        if not isinstance(info, dict):
            reason = "no ONNX export recorded"
        elif not info.get("file"):
            reason = f"no ONNX export: {info.get('reason') or 'no reason recorded'}"
        elif not isinstance(info.get("parity"), dict) or info["parity"].get("ok") is not True:
            reason = "the ONNX export has no passing parity check recorded"
        else:
            try:
                return Choice("onnx", verified(folder, str(info["file"]), info.get("sha256")))
            except StoreError as exc:
                reason = str(exc)
    elif preferred != "sklearn":
        raise ValueError(f"unknown member runtime {preferred!r}; expected onnx or sklearn")
    return sklearn_choice(folder, reason)


def sklearn_choice(folder: Path, reason: str | None = None) -> Choice:
    return Choice("sklearn", verified(folder, JOBLIB, metadata(folder).get("sha256")), reason)


def ensemble(home: Path, prefix: str, version: str) -> dict[str, Any]:
    """combiner.json (hash-checked) plus the feature schema of an ensemble version."""
    folder = model_dir(home, prefix, "ensemble", version)
    meta = metadata(folder)
    combiner: dict[str, Any] = json.loads(verified(folder, COMBINER, meta.get("sha256")).read_text())
    combiner["schema"] = json.loads(str(meta["schema"]))
    return combiner


def runtimes(home: Path, prefix: str, version: str, preferred: str = "onnx") -> dict[str, dict[str, str | None]]:
    """Member -> the runtime ``choose`` picks and why not ONNX (for reports)."""
    out: dict[str, dict[str, str | None]] = {}
    for member in ensemble(home, prefix, version)["members"]:
        choice = choose(model_dir(home, prefix, member, version), preferred)
        out[member] = {"runtime": choice.runtime, "reason": choice.reason}
    return out
