"""Member runtime: the ONNX graph stored with each member, its parity with scikit-learn, and every fallback."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import pytest
from pydantic import ValidationError
from sklearn.pipeline import make_pipeline
from sklearn.svm import OneClassSVM

from fraudserve import runtime
from fraudserve.edge.parity import TOLERANCE, parity_rows
from fraudserve.ensemble import combine
from fraudserve.local import load_local
from fraudserve.rollout.versions import with_version_column
from fraudserve.settings import Settings
from models import store
from models.members import LINKS, SCORE
from models.onnx_export import export_member
from models.train import train
from models.transactions import TRANSACTION_SCHEMA, generate_transactions

PREFIX = "rt"
MEMBERS = ("hgb", "logreg", "iforest")


def rows(n: int = 3_000, seed: int = 21) -> np.ndarray:
    frame = generate_transactions(n, seed=seed).drop(columns="is_fraud")
    return TRANSACTION_SCHEMA.encode_records(frame.to_dict("records"))


def estimators(version: str) -> dict[str, Any]:
    return {m: store.load_member(bentoml.models.get(f"fraud_{m}:{version}")) for m in MEMBERS}


def save_copy(source: str, version: str, members: dict[str, Any] | None = None, prefix: str = PREFIX) -> str:
    """Save ``fraud:<source>`` (or ``members``) as ``<prefix>:<version>``, each member exported to ONNX again."""
    spec = store.load_ensemble("fraud", source)
    members = {**estimators(source), **(members or {})}
    for member, estimator in members.items():
        meta = {k: v for k, v in bentoml.models.get(spec.tag(member)).info.metadata.items() if k != "sha256"}
        onnx = export_member(member, estimator, LINKS[member], spec.schema, parity_n=500)
        store.save_member(prefix, member, version, estimator, meta, onnx=onnx)
    combiner = {
        "members": list(spec.members),
        "weights": spec.weights,
        "links": spec.links,
        "intercept": spec.intercept,
        "threshold": spec.threshold,
    }
    meta = {k: v for k, v in bentoml.models.get(spec.tag("ensemble")).info.metadata.items() if k != "sha256"}
    store.save_ensemble(prefix, version, combiner, meta)
    return version


def tamper_onnx(prefix: str, member: str, version: str) -> None:
    path = Path(bentoml.models.get(f"{prefix}_{member}:{version}").path) / store.ONNX_ARTIFACT
    path.write_bytes(path.read_bytes() + b"tampered")


@pytest.fixture(scope="module")
def tampered(trained: str) -> str:
    version = save_copy(trained, "tampered")
    tamper_onnx(PREFIX, "hgb", version)
    return version


def test_every_member_is_stored_with_its_hash_checked_parity_checked_onnx_graph(trained: str) -> None:
    for member in MEMBERS:
        model = bentoml.models.get(f"fraud_{member}:{trained}")
        info = model.info.metadata[store.ONNX]
        graph = Path(model.path) / store.ONNX_ARTIFACT
        assert info["file"] == store.ONNX_ARTIFACT
        assert info["sha256"] == hashlib.sha256(graph.read_bytes()).hexdigest()
        parity = info["parity"]
        assert parity["ok"] is True and parity["rows"] == 4_000 and parity["tolerance"] == TOLERANCE["full"]
        assert parity["max_abs_diff"][member] <= 1e-12
        assert runtime.choose(model, "onnx") == runtime.RuntimeChoice("onnx")


def test_onnx_members_and_ensemble_probability_match_sklearn(trained: str) -> None:
    spec = store.load_ensemble("fraud", trained)
    fitted = estimators(trained)
    matrix = np.vstack([rows(), parity_rows(spec.schema, 1_000, seed=3)])
    onnx = {m: runtime.load(bentoml.models.get(spec.tag(m)), "onnx") for m in MEMBERS}
    assert {m: model.runtime for m, model in onnx.items()} == dict.fromkeys(MEMBERS, "onnx")
    got = {m: onnx[m].score(matrix) for m in MEMBERS}
    expected = {m: SCORE[m](fitted[m], matrix) for m in MEMBERS}
    for member in MEMBERS:
        assert got[member].dtype == np.float64 and got[member].shape == (len(matrix),)
        np.testing.assert_allclose(got[member], expected[member], rtol=0, atol=TOLERANCE["full"], err_msg=member)
    p_onnx = combine(got, spec.weights, spec.links, spec.intercept)
    p_sklearn = combine(expected, spec.weights, spec.links, spec.intercept)
    np.testing.assert_allclose(p_onnx, p_sklearn, rtol=0, atol=TOLERANCE["full"])
    assert ((p_onnx >= spec.threshold) == (p_sklearn >= spec.threshold)).all()


def test_in_process_scorer_and_describe_version_use_onnx_by_default(trained: str) -> None:
    assert Settings().member_runtime == "onnx"
    _, scorer = load_local(Settings(model_version=trained))
    assert scorer.runtimes == dict.fromkeys(MEMBERS, "onnx")
    assert runtime.describe_version("fraud", trained, "onnx") == dict.fromkeys(MEMBERS, "onnx")
    matrix = rows(500)
    for member in MEMBERS:
        np.testing.assert_allclose(
            scorer.score_sync(member, matrix), SCORE[member](scorer.estimators[member], matrix), rtol=0, atol=1e-12
        )


def test_setting_sklearn_gives_sklearn(trained: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_MEMBER_RUNTIME", "sklearn")
    settings = Settings(model_version=trained)
    assert settings.member_runtime == "sklearn"
    _, scorer = load_local(settings)
    assert scorer.runtimes == dict.fromkeys(MEMBERS, "sklearn")
    assert all(model.reason is None for model in scorer.members.values())
    assert runtime.describe_version("fraud", trained, settings.member_runtime) == dict.fromkeys(MEMBERS, "sklearn")
    monkeypatch.setenv("FRAUD_MEMBER_RUNTIME", "tensorrt")
    with pytest.raises(ValidationError):
        Settings()


def test_tampered_onnx_graph_falls_back_to_the_hash_checked_joblib(
    tampered: str, trained: str, caplog: pytest.LogCaptureFixture
) -> None:
    model = bentoml.models.get(f"{PREFIX}_hgb:{tampered}")
    choice = runtime.choose(model, "onnx")
    assert choice.runtime == "sklearn"
    assert choice.reason is not None and "model.onnx does not match its recorded sha256" in choice.reason
    assert runtime.describe_version(PREFIX, tampered, "onnx") == {"hgb": "sklearn", "logreg": "onnx", "iforest": "onnx"}
    with caplog.at_level(logging.WARNING, logger="fraudserve.runtime"):
        loaded = [runtime.load(model, "onnx") for _ in range(3)]
    assert {m.runtime for m in loaded} == {"sklearn"}
    warnings = [r for r in caplog.records if r.name == "fraudserve.runtime"]
    assert len(warnings) == 1, "a fallback is logged once per member version"
    assert warnings[0].levelno == logging.WARNING
    assert f"{PREFIX}_hgb" in warnings[0].getMessage() and tampered in warnings[0].getMessage()
    assert "sha256" in warnings[0].getMessage()
    matrix = rows(400)
    np.testing.assert_array_equal(loaded[0].score(matrix), SCORE["hgb"](estimators(trained)["hgb"], matrix))


def test_a_member_the_converter_cannot_convert_trains_and_serves_with_sklearn(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import fraudserve.edge.convert as convert

    real = convert.convert_member

    def convert_member(member: str, *args: Any, **kwargs: Any) -> Any:
        if member == "iforest":
            raise RuntimeError("converter bug")
        return real(member, *args, **kwargs)

    monkeypatch.setattr(convert, "convert_member", convert_member)
    with caplog.at_level(logging.WARNING, logger="models.train"):
        result = train(generate_transactions(3_000, seed=8), TRANSACTION_SCHEMA, prefix="rtfail", seed=8, version="v1")
    assert result.onnx["iforest"].startswith("none: member 'iforest': ONNX export failed: RuntimeError: converter bug")
    assert any("rtfail_iforest:v1 saved without ONNX" in r.getMessage() for r in caplog.records)
    model = bentoml.models.get("rtfail_iforest:v1")
    assert not (Path(model.path) / store.ONNX_ARTIFACT).exists()
    assert "converter bug" in model.info.metadata[store.ONNX]["reason"]
    choice = runtime.choose(model, "onnx")
    assert choice.runtime == "sklearn" and choice.reason is not None and "converter bug" in choice.reason
    assert runtime.describe_version("rtfail", "v1", "onnx") == {"hgb": "onnx", "logreg": "onnx", "iforest": "sklearn"}
    _, scorer = load_local(Settings(model_prefix="rtfail", model_version="v1"))
    assert scorer.runtimes == {"hgb": "onnx", "logreg": "onnx", "iforest": "sklearn"}
    matrix = rows(300)
    np.testing.assert_array_equal(
        scorer.score_sync("iforest", matrix), SCORE["iforest"](scorer.estimators["iforest"], matrix)
    )


def test_unsupported_or_unfaithful_estimators_get_no_graph_and_the_reason(trained: str) -> None:
    fitted = estimators(trained)
    svm = OneClassSVM().fit(rows(200))
    unsupported = export_member("iforest", svm, LINKS["iforest"], TRANSACTION_SCHEMA, parity_n=200)
    assert unsupported.graph is None and unsupported.parity is None
    assert unsupported.reason is not None and "only IsolationForest" in unsupported.reason
    # skl2onnx converts an HGB inside a Pipeline without error but drops its category splits: parity refuses it.
    wrapped = export_member("hgb", make_pipeline(fitted["hgb"]), LINKS["hgb"], TRANSACTION_SCHEMA, parity_n=1_000)
    assert wrapped.graph is None and wrapped.parity is not None and not wrapped.parity.ok
    assert wrapped.reason is not None and "differs from scikit-learn" in wrapped.reason

    version = save_copy(trained, "unsupported", {"iforest": svm})
    model = bentoml.models.get(f"{PREFIX}_iforest:{version}")
    choice = runtime.choose(model, "onnx")
    assert choice.runtime == "sklearn" and choice.reason is not None and "only IsolationForest" in choice.reason
    loaded = runtime.load(model, "onnx")
    matrix = rows(200)
    assert loaded.runtime == "sklearn"
    np.testing.assert_array_equal(loaded.score(matrix), -svm.score_samples(matrix))


def test_a_copied_member_does_not_inherit_the_onnx_metadata_of_its_source(trained: str) -> None:
    source = bentoml.models.get(f"fraud_hgb:{trained}")
    meta = {k: v for k, v in source.info.metadata.items() if k != "sha256"}
    tag = store.save_member(PREFIX, "hgb", "copied", store.load_member(source), meta)
    choice = runtime.choose(bentoml.models.get(tag), "onnx")
    assert choice.runtime == "sklearn" and choice.reason == "no ONNX export: saved without an ONNX export"


def test_runner_serves_each_version_with_its_runtime_and_nan_for_a_missing_one(trained: str) -> None:
    from runners.factory import build_runner

    spec = store.load_ensemble("fraud", trained)
    fitted = estimators(trained)
    # Only the member is saved: the runner's start-up version (the newest ensemble) stays the same.
    source = bentoml.models.get(spec.tag("hgb"))
    meta = {k: v for k, v in source.info.metadata.items() if k != "sha256"}
    store.save_member(
        "fraud",
        "hgb",
        "vrt-tampered",
        fitted["hgb"],
        meta,
        onnx=export_member("hgb", fitted["hgb"], LINKS["hgb"], spec.schema, parity_n=500),
    )
    tamper_onnx("fraud", "hgb", "vrt-tampered")
    runner = build_runner("hgb").inner()
    assert runner.runtime == "onnx"
    matrix = rows(30)
    features = np.vstack(
        [
            with_version_column(matrix[:10], trained),
            with_version_column(matrix[10:20], "vrt-tampered"),
            with_version_column(matrix[20:], "v-missing"),
        ]
    )
    for api in (runner.score, runner.score_bulk):
        scores = api(features)
        assert scores.dtype == np.float64 and scores.shape == (30,)
        expected = SCORE["hgb"](fitted["hgb"], matrix[:20])
        np.testing.assert_allclose(scores[:20], expected, rtol=0, atol=1e-12)
        assert np.isnan(scores[20:]).all()
    from fraudserve.rollout.versions import version_code

    assert runner.member.model_for(version_code(trained)).runtime == "onnx"
    assert runner.member.model_for(version_code("vrt-tampered")).runtime == "sklearn"


def test_in_process_members_score_coded_rows_like_the_runner(trained: str) -> None:
    """FRAUD_MEMBER_PLACEMENT=inprocess scores through the same coded scorer as the runners: same rows, same scores."""
    import asyncio

    from fraudserve.members import InProcessMembers
    from runners.factory import build_runner

    spec = store.load_ensemble("fraud", trained)
    members = InProcessMembers.load(spec, preferred="onnx", threads=1)
    matrix = rows(40, seed=5)
    mixed = np.vstack([with_version_column(matrix[:30], trained), with_version_column(matrix[30:], "v-missing")])
    single = with_version_column(matrix, trained)
    for member in MEMBERS:
        runner = build_runner(member).inner()
        for coded in (mixed, single):
            ours = asyncio.run(members.call_coded(member, coded))
            np.testing.assert_array_equal(ours, runner.score(coded))
        assert np.isnan(asyncio.run(members.call_coded(member, mixed))[30:]).all()
        assert members.members[member].runtime == "onnx"
