"""Edge export: parity of the ONNX bundle with the scikit-learn members, integrity, refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.svm import OneClassSVM

from fraudserve.edge import scorer
from fraudserve.edge.bundle import TOLERANCE, bundle_size, export_bundle, parity_rows, verify_bundle
from fraudserve.edge.cli import main as edge_main
from fraudserve.edge.convert import convert_member
from fraudserve.edge.parity import reference_scores
from fraudserve.ensemble import EnsembleSpec
from fraudserve.errors import ExportError
from fraudserve.local import LocalScorer, load_local


@pytest.fixture(scope="module")
def served(trained: str) -> tuple[EnsembleSpec, LocalScorer]:
    return load_local(version=trained)


@pytest.fixture(scope="module")
def bundles(served: tuple[EnsembleSpec, LocalScorer], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    spec, local = served
    root = tmp_path_factory.mktemp("edge")
    out = {}
    for variant in ("full", "compact"):
        out[variant] = root / variant
        export_bundle(spec, local.estimators, out[variant], variant=variant, parity_n=2_000)  # type: ignore[arg-type]
    return out


@pytest.mark.parametrize("variant", ["full", "compact"])
def test_exported_scores_match_sklearn_on_fresh_rows(
    variant: str, bundles: dict[str, Path], served: tuple[EnsembleSpec, LocalScorer]
) -> None:
    spec, local = served
    parity = verify_bundle(bundles[variant], spec, local.estimators, rows=5_000)
    assert set(parity.max_abs_diff) == {*spec.members, "ensemble"}
    assert parity.ok, parity.to_dict()
    assert max(parity.max_abs_diff.values()) <= TOLERANCE[variant]
    if variant == "full":
        assert parity.decisions_changed == 0


def test_full_bundle_is_exact_to_float64_rounding(bundles: dict[str, Path], served: tuple[EnsembleSpec, Any]) -> None:
    spec, local = served
    rows = parity_rows(spec.schema, 3_000, seed=5)
    expected = reference_scores({m: local.estimators[m] for m in spec.members}, rows)
    got = scorer.EdgeBundle(bundles["full"]).member_scores(rows)
    for member in spec.members:
        np.testing.assert_allclose(got[member], expected[member], rtol=0, atol=1e-12, err_msg=member)


def test_manifest_records_versions_and_hash_of_every_file(bundles: dict[str, Path]) -> None:
    root = bundles["full"]
    manifest = json.loads((root / scorer.MANIFEST).read_text())
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {scorer.MANIFEST}
    assert set(manifest["files"]) == files
    assert {"members/hgb.onnx", "members/logreg.onnx", "members/iforest.onnx", "schema.json", "combiner.json"} <= files
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == scorer.sha256_file(root / name)
    assert {"numpy", "scikit-learn", "skl2onnx", "onnx", "onnxruntime"} <= set(manifest["versions"])
    assert manifest["parity"]["ok"] is True
    schema = json.loads((root / "schema.json").read_text())
    category = next(f for f in schema["features"] if f["kind"] == "category")
    assert category["categories"]
    combiner = json.loads((root / "combiner.json").read_text())
    assert {"weights", "links", "intercept", "threshold", "version"} <= set(combiner)


def test_compact_bundle_is_smaller(bundles: dict[str, Path]) -> None:
    assert bundle_size(bundles["compact"])["members_total"] < bundle_size(bundles["full"])["members_total"]


def test_tampered_bundle_is_refused(bundles: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(bundles["full"], copy)
    combiner = json.loads((copy / "combiner.json").read_text())
    combiner["threshold"] = 0.99
    (copy / "combiner.json").write_text(json.dumps(combiner))
    with pytest.raises(scorer.BundleError, match=r"combiner\.json does not match its sha256"):
        scorer.EdgeBundle(copy)


def test_skl2onnx_alone_drops_hgb_categorical_splits(served: tuple[EnsembleSpec, LocalScorer]) -> None:
    """Why trees.py exists: skl2onnx converts our HGB without error but ignores its category splits."""
    import onnxruntime as ort

    spec, local = served
    rows = parity_rows(spec.schema, 2_000)
    hgb = local.estimators["hgb"]
    model = convert_member("hgb", hgb, "logit", spec.schema, np.float32, route="skl2onnx")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"features": rows.astype(np.float32)})[0]
    assert np.max(np.abs(got - hgb.predict_proba(rows)[:, 1])) > 0.05


def test_export_refuses_estimator_skl2onnx_cannot_convert(
    served: tuple[EnsembleSpec, LocalScorer], tmp_path: Path
) -> None:
    spec, local = served
    X = parity_rows(spec.schema, 500)
    y = (X[:, 0] > np.median(X[:, 0])).astype(int)
    custom = make_pipeline(FunctionTransformer(np.log1p), LogisticRegression()).fit(X, y)
    with pytest.raises(ExportError, match=r"member 'logreg': skl2onnx cannot convert Pipeline\(FunctionTransformer"):
        export_bundle(spec, {**local.estimators, "logreg": custom}, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []  # the staging folder is gone too


def test_export_refuses_unsupported_anomaly_model(served: tuple[EnsembleSpec, LocalScorer], tmp_path: Path) -> None:
    spec, local = served
    svm = OneClassSVM().fit(parity_rows(spec.schema, 200))
    with pytest.raises(ExportError, match=r"member 'iforest': only IsolationForest .* not OneClassSVM"):
        export_bundle(spec, {**local.estimators, "iforest": svm}, tmp_path / "out")


def test_export_refuses_a_silently_wrong_conversion(served: tuple[EnsembleSpec, LocalScorer], tmp_path: Path) -> None:
    """HGB wrapped in a Pipeline goes through skl2onnx, which drops its category splits: parity refuses it."""
    spec, local = served
    members = {**local.estimators, "hgb": make_pipeline(local.estimators["hgb"])}
    with pytest.raises(ExportError, match=r"refused: hgb differs from scikit-learn by .* > tolerance"):
        export_bundle(spec, members, tmp_path / "out", parity_n=1_000)
    assert not (tmp_path / "out").exists()


def test_cli_export_verify_and_existing_output(
    trained: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bundle"
    assert edge_main(["export", "--out", str(out), "--version", trained, "--parity-rows", "1000"]) == 0
    assert "parity on 1000 rows" in capsys.readouterr().out
    assert edge_main(["verify", str(out), "--rows", "1000"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["model_version"] == trained
    assert edge_main(["export", "--out", str(out), "--version", trained]) == 2
    assert "existing bundle; pass --overwrite" in capsys.readouterr().err
    assert edge_main(["verify", str(tmp_path)]) == 2
    assert "not an edge bundle" in capsys.readouterr().err


def test_web_page_copies_the_runtime_or_names_how_to_get_it(tmp_path: Path) -> None:
    from fraudserve.edge.browser import MODULE, ORT_FILES, ORT_FOLDER, PAGE, WebOptions, write_web

    missing = tmp_path / "node_modules" / "onnxruntime-web" / "dist"
    (tmp_path / "a").mkdir()
    with pytest.raises(ExportError, match=r"onnxruntime-web not found .*`npm install --no-package-lock"):
        write_web(tmp_path / "a", WebOptions(ort_dir=missing))

    missing.mkdir(parents=True)
    for name in ORT_FILES:
        (missing / name).write_text(name)
    (missing.parent / "package.json").write_text(json.dumps({"version": "9.9.9"}))
    (tmp_path / "b").mkdir()
    entry = write_web(tmp_path / "b", WebOptions(ort_dir=missing))
    assert entry == {"page": PAGE, "module": MODULE, "ort_url": ORT_FOLDER, "onnxruntime_web": "9.9.9"}
    assert sorted(p.name for p in (tmp_path / "b" / ORT_FOLDER).iterdir()) == sorted(ORT_FILES)
    assert (tmp_path / "b" / PAGE).read_text().startswith("<!doctype html>")

    (tmp_path / "c").mkdir()
    entry = write_web(tmp_path / "c", WebOptions(ort_dir=tmp_path / "nowhere", ort_url="https://example.org/ort/"))
    assert entry["ort_url"] == "https://example.org/ort/" and not (tmp_path / "c" / ORT_FOLDER).exists()
