"""The edge bundle against the real server: same scores as POST /predict; a runner served alone on its ONNX runtime."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from fraudserve.edge.bundle import TOLERANCE, export_bundle
from fraudserve.edge.scorer import EdgeBundle
from fraudserve.launcher import BundleServer
from fraudserve.local import load_local
from fraudserve.rollout.versions import with_version_column
from models.transactions import generate_transactions

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bundles(trained: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    spec, local = load_local(version=trained)
    root = tmp_path_factory.mktemp("edge-int")
    for variant in ("full", "compact"):
        export_bundle(spec, local.estimators, root / variant, variant=variant, parity_n=1_000)  # type: ignore[arg-type]
    return {v: root / v for v in ("full", "compact")}


@pytest.mark.parametrize("variant", ["full", "compact"])
def test_bundle_scores_match_the_server(variant: str, bundles: dict[str, Path], server: BundleServer) -> None:
    records = generate_transactions(400, seed=77).drop(columns="is_fraud").to_dict("records")
    response = httpx.post(server.url + "/predict", json={"transactions": records}, timeout=60)
    assert response.status_code == 200, response.text
    served = response.json()["predictions"]
    bundle = EdgeBundle(bundles[variant])
    edge = bundle.predictions(bundle.encode(records))
    tolerance = TOLERANCE[variant]
    assert {p["model_version"] for p in served} == {bundle.version}
    np.testing.assert_allclose(
        [p["fraud_probability"] for p in edge], [p["fraud_probability"] for p in served], rtol=0, atol=tolerance
    )
    for member in bundle.members:
        np.testing.assert_allclose(
            [p["scores"][member] for p in edge], [p["scores"][member] for p in served], rtol=0, atol=tolerance
        )
    if variant == "full":
        assert [p["is_fraud"] for p in edge] == [p["is_fraud"] for p in served]


def test_runner_served_on_its_own_scores_with_the_stored_onnx_graph(trained: str, bentoml_home: Path) -> None:
    """The same graphs, from the model store, behind a runner: scikit-learn's scores, NaN for an unknown version."""
    spec, local = load_local(version=trained)
    rows = spec.schema.encode_records(generate_transactions(50, seed=5).drop(columns="is_fraud").to_dict("records"))
    env = {"FRAUD_MODEL_VERSION": trained, "FRAUD_MEMBER_RUNTIME": "onnx"}
    coded = with_version_column(rows, trained).tolist()
    mixed = np.vstack([with_version_column(rows[:5], "v-other"), with_version_column(rows[5:10], trained)]).tolist()
    with BundleServer(env=env, bentoml_home=bentoml_home, target="runners.hgb:HgbRunner") as runner:
        scored = httpx.post(runner.url + "/score", json={"features": coded}, timeout=30)
        bulk = httpx.post(runner.url + "/score_bulk", json={"features": coded}, timeout=30)
        version = httpx.post(runner.url + "/version", json={}, timeout=30)
        other = httpx.post(runner.url + "/score_bulk", json={"features": mixed}, timeout=30)
        metrics = runner.metrics()
    assert scored.status_code == 200, scored.text
    expected = local.estimators["hgb"].predict_proba(rows)[:, 1]
    np.testing.assert_allclose(scored.json(), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(bulk.json(), expected, rtol=0, atol=1e-12)
    assert version.text == trained
    assert other.status_code == 200, other.text
    got = np.asarray(other.json(), dtype=np.float64)
    assert np.isnan(got[:5]).all()
    np.testing.assert_allclose(got[5:], expected[5:10], rtol=0, atol=1e-12)
    assert 'runtime="onnx"' in metrics
