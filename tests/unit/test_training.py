from __future__ import annotations

import asyncio
import json
from pathlib import Path

import bentoml
import numpy as np
import pandas as pd
import pytest

from fraudserve.errors import ModelStoreError
from fraudserve.local import load_local, local_core
from fraudserve.settings import Settings
from models import store
from models.train import infer_schema, main, member_scores, train
from models.transactions import TRANSACTION_SCHEMA, generate_transactions


def test_training_saves_members_and_ensemble_with_metadata(trained: str) -> None:
    for kind in ("hgb", "logreg", "iforest", "ensemble"):
        model = bentoml.models.get(f"fraud_{kind}:{trained}")
        meta = model.info.metadata
        assert meta["version"] == trained
        assert len(meta["data_hash"]) == 64
        assert len(meta["sha256"]) == 64
        assert json.loads(meta["schema"])["label"] == "is_fraud"
    spec = store.load_ensemble("fraud", trained)
    assert spec.schema == TRANSACTION_SCHEMA
    assert spec.members == ("hgb", "logreg", "iforest")
    assert 0.0 < spec.threshold < 1.0
    # Held-out quality on the seeded generator: the ensemble must be clearly better than chance.
    assert spec.metrics["ensemble"]["roc_auc"] > 0.9
    assert spec.metrics["ensemble"]["pr_auc"] > 0.3
    assert spec.metrics["hgb"]["roc_auc"] > spec.metrics["iforest"]["roc_auc"] - 0.05


def test_latest_resolves_to_newest_version(trained: str) -> None:
    assert store.resolve_version("fraud", "latest") == trained
    with pytest.raises(ModelStoreError, match="make models"):
        store.resolve_version("nosuchprefix", "latest")


def test_core_scores_like_the_trained_members(trained: str) -> None:
    spec, scorer = load_local(Settings(model_version=trained))
    frame = generate_transactions(200, seed=99).drop(columns="is_fraud")
    records = frame.to_dict("records")
    scored = asyncio.run(local_core(Settings(model_version=trained)).predict(records, transport="test"))
    matrix = TRANSACTION_SCHEMA.encode_records(records)
    expected = member_scores(scorer.estimators, matrix)
    for member, scores in expected.items():
        np.testing.assert_allclose(scored.member_scores[member], scores)
    np.testing.assert_allclose(scored.probabilities, spec.combine(expected))
    assert (scored.decisions == (scored.probabilities >= spec.threshold)).all()
    response = scored.to_response()
    assert len(response.predictions) == 200
    assert response.model_versions["hgb"] == f"fraud_hgb:{trained}"


def test_tampered_artifact_is_refused(trained: str, tmp_path: Path) -> None:
    frame = generate_transactions(3_000, seed=4)
    version = train(frame, TRANSACTION_SCHEMA, prefix="tamper", seed=4, version="v1").version
    model = bentoml.models.get(f"tamper_hgb:{version}")
    artifact = Path(model.path) / store.ARTIFACT
    artifact.write_bytes(artifact.read_bytes() + b"x")
    with pytest.raises(ModelStoreError, match="sha256"):
        store.load_member(model)


def test_train_on_user_csv(tmp_path: Path, trained: str) -> None:
    rng = np.random.default_rng(0)
    n = 4_000
    frame = pd.DataFrame(
        {
            "spend": rng.gamma(2.0, 30.0, n).round(2),
            "night": rng.random(n) < 0.1,
            "channel": rng.choice(["web", "pos", "atm"], n),
            "retries": rng.poisson(1.0, n),
        }
    )
    frame["label"] = ((frame.spend > 120) & frame.night | (rng.random(n) < 0.01)).astype(int)
    csv = tmp_path / "mine.csv"
    frame.to_csv(csv, index=False)

    schema = infer_schema(pd.read_csv(csv), "label")
    kinds = {f.name: f.kind for f in schema.features}
    assert kinds == {"spend": "float", "night": "bool", "channel": "category", "retries": "int"}

    assert main(["--csv", str(csv), "--label", "label", "--prefix", "mine", "--version", "u1"]) == 0
    spec = store.load_ensemble("mine", "u1")
    assert spec.schema == schema
    core = local_core(Settings(model_prefix="mine", model_version="u1"))
    scored = asyncio.run(core.predict(frame.drop(columns="label").head(5).to_dict("records"), transport="test"))
    assert scored.probabilities.shape == (5,)
    assert main(["--prefix", "mine", "--if-missing"]) == 0  # present: no retraining


def test_bad_csv_is_refused(tmp_path: Path) -> None:
    csv = tmp_path / "bad.csv"
    pd.DataFrame({"a": [1, 2], "y": [0, 1]}).to_csv(csv, index=False)
    with pytest.raises(SystemExit, match="label column 'label'"):
        main(["--csv", str(csv), "--label", "label"])
