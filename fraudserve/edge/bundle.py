"""Export the served ensemble into an edge bundle, and check a bundle against the served models.

A bundle is a folder that scores with numpy + onnxruntime alone:

    manifest.json       format, variant, versions of every tool, sha256 + size of each file, parity
    schema.json         the feature schema (names, kinds, ranges, categories)
    combiner.json       members, weights, links, intercept, threshold, model version
    members/<m>.onnx    one graph per member: features [n, f] -> score [n] (the runner's score)
    edge_scorer.py      the offline JSON-lines scorer (fraudserve/edge/scorer.py)
    index.html, web/    with ``web``: the browser page on onnxruntime-web (fraudserve/edge/browser.py)

Variants: "full" keeps float64 everywhere (scores match scikit-learn to ~1e-15). "compact" is
saved after onnxruntime's offline graph optimisation and stores the IsolationForest (the largest
member) in float32, which is faithful because scikit-learn itself walks those trees in float32.
The others stay float64 in both, as measured on the 200k-row model: float32 inputs send HGB
values near a split threshold the other way (|diff| up to 0.064), and float32 logistic
probabilities near 0/1 move the ensemble's logit enough for a 0.0016 probability difference.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from fraudserve.edge import scorer as edge_scorer
from fraudserve.edge.browser import WebOptions, write_web
from fraudserve.edge.convert import convert_member
from fraudserve.edge.parity import (
    PARITY_ROWS,
    TOLERANCE,
    VARIANTS,
    Parity,
    Variant,
    measure,
    parity_rows,
    reference_scores,
)
from fraudserve.ensemble import EnsembleSpec
from fraudserve.errors import ExportError
from fraudserve.scoring import combine_scores

SCORER_FILE = "edge_scorer.py"
_TOOLS = ("numpy", "scikit-learn", "skl2onnx", "onnx", "onnxruntime", "fraud-bundle")


def member_dtype(variant: Variant, estimator: Any) -> Any:
    from sklearn.ensemble import IsolationForest

    return np.float32 if variant == "compact" and isinstance(estimator, IsolationForest) else np.float64


def compare(
    spec: EnsembleSpec, estimators: dict[str, Any], bundle: edge_scorer.EdgeBundle, matrix: np.ndarray, tol: float
) -> Parity:
    expected = reference_scores({m: estimators[m] for m in spec.members}, matrix)
    got = bundle.score(matrix)
    reference = combine_scores(spec, expected)
    changed = int(np.sum(got.decisions != reference.decisions))
    return measure(
        {**expected, "ensemble": reference.probabilities},
        {**got.member_scores, "ensemble": got.probabilities},
        tol,
        decisions_changed=changed,
    )


def export_bundle(
    spec: EnsembleSpec,
    estimators: dict[str, Any],
    out: Path,
    *,
    variant: Variant = "full",
    parity_n: int = PARITY_ROWS,
    overwrite: bool = False,
    web: WebOptions | None = None,
) -> tuple[dict[str, Any], Parity]:
    """Write a bundle to ``out`` (atomically: a temp dir renamed into place once parity holds); ``web``
    adds the browser page."""
    if variant not in VARIANTS:
        raise ExportError(f"unknown variant {variant!r}; expected one of {list(VARIANTS)}", field="variant")
    if out.exists() and not (overwrite and (out / edge_scorer.MANIFEST).is_file()):
        what = "an existing bundle; pass --overwrite" if (out / edge_scorer.MANIFEST).is_file() else "not a bundle"
        raise ExportError(f"{out} exists ({what})", field="out")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        (staging / "members").mkdir()
        members_info: dict[str, dict[str, str]] = {}
        for member in spec.members:
            dtype = member_dtype(variant, estimators[member])
            model = convert_member(member, estimators[member], spec.links[member], spec.schema, dtype)
            file = f"members/{member}.onnx"
            _write_model(model, staging / file, optimise=variant == "compact")
            members_info[member] = {
                "file": file,
                "estimator": type(estimators[member]).__name__,
                "input_dtype": np.dtype(dtype).name,
            }
        (staging / edge_scorer.SCHEMA).write_text(spec.schema.model_dump_json(indent=2))
        combiner = {
            "version": spec.version,
            "prefix": spec.prefix,
            "members": list(spec.members),
            "weights": spec.weights,
            "links": spec.links,
            "intercept": spec.intercept,
            "threshold": spec.threshold,
        }
        (staging / edge_scorer.COMBINER).write_text(json.dumps(combiner, indent=2, sort_keys=True))
        shutil.copyfile(edge_scorer.__file__, staging / SCORER_FILE)
        web_entry = write_web(staging, web) if web is not None else None
        manifest = {
            "format": edge_scorer.FORMAT,
            "variant": variant,
            "prefix": spec.prefix,
            "model_version": spec.version,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": {"python": platform.python_version(), **{t: _version(t) for t in _TOOLS}},
            "members": members_info,
            **({"web": web_entry} if web_entry is not None else {}),
            "files": _file_table(staging),
        }
        _write_manifest(staging, manifest)
        parity = compare(
            spec,
            estimators,
            edge_scorer.EdgeBundle(staging),
            parity_rows(spec.schema, parity_n),
            TOLERANCE[variant],
        )
        if not parity.ok:
            worst = parity.worst()
            raise ExportError(
                f"export of {spec.prefix} {spec.version} ({variant}) refused: {worst} differs from scikit-learn by "
                f"{parity.max_abs_diff[worst]:.3g} > tolerance {parity.tolerance:g} on {parity.rows} rows"
            )
        manifest["parity"] = parity.to_dict()
        _write_manifest(staging, manifest)
        staging.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be shipped
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest, parity


def verify_bundle(path: Path, spec: EnsembleSpec, estimators: dict[str, Any], rows: int) -> Parity:
    """Parity of a bundle on ``rows`` fresh generated rows against the in-process scikit-learn ensemble."""
    bundle = edge_scorer.EdgeBundle(path)
    if bundle.version != spec.version:
        raise ExportError(f"bundle holds model version {bundle.version}, the store gave {spec.version}")
    variant = bundle.manifest["variant"]
    return compare(spec, estimators, bundle, parity_rows(spec.schema, rows, seed=99), TOLERANCE[variant])


def bundle_size(path: Path) -> dict[str, int]:
    manifest = edge_scorer.verify_files(path)
    sizes = {name: int(entry["bytes"]) for name, entry in manifest["files"].items()}
    sizes["members_total"] = sum(v for k, v in sizes.items() if k.startswith("members/"))
    return sizes


def _write_model(model: onnx.ModelProto, path: Path, *, optimise: bool) -> None:
    if not optimise:
        onnx.save_model(model, str(path))
        return
    import onnxruntime as ort

    # Offline optimisation: the saved graph is what onnxruntime would run after its own passes, so
    # a device skips them at load. BASIC keeps only standard ONNX ops (portable across providers).
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(path)
    plain = model.SerializeToString()
    ort.InferenceSession(plain, options, providers=["CPUExecutionProvider"])
    if path.stat().st_size > len(plain):  # nothing to fold (e.g. a tiny linear graph): keep the smaller
        path.write_bytes(plain)


def _file_table(root: Path) -> dict[str, dict[str, Any]]:
    return {
        p.relative_to(root).as_posix(): {"sha256": edge_scorer.sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != edge_scorer.MANIFEST
    }


def _write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    (root / edge_scorer.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"
