"""The edge bundle against the real server: same scores as POST /predict, and the ONNX runner served alone."""

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


def test_onnx_runner_served_on_its_own(bundles: dict[str, Path], trained: str, bentoml_home: Path) -> None:
    spec, local = load_local(version=trained)
    rows = spec.schema.encode_records(generate_transactions(50, seed=5).drop(columns="is_fraud").to_dict("records"))
    env = {"FRAUD_EDGE_BUNDLE_DIR": str(bundles["full"]), "FRAUD_MODEL_VERSION": trained}
    coded = with_version_column(rows, trained).tolist()
    other = with_version_column(rows, "v-other").tolist()
    with BundleServer(env=env, bentoml_home=bentoml_home, target="runners.onnx:HgbOnnxRunner") as runner:
        scored = httpx.post(runner.url + "/score", json={"features": coded}, timeout=30)
        bulk = httpx.post(runner.url + "/score_bulk", json={"features": coded}, timeout=30)
        version = httpx.post(runner.url + "/version", json={}, timeout=30)
        wrong_version = httpx.post(runner.url + "/score_bulk", json={"features": other}, timeout=30)
    assert scored.status_code == 200, scored.text
    assert wrong_version.status_code >= 400
    expected = local.score_sync("hgb", rows)
    np.testing.assert_allclose(scored.json(), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(bulk.json(), expected, rtol=0, atol=1e-12)
    assert version.text == trained


def test_onnx_runner_refuses_a_folder_that_is_not_a_bundle(trained: str, bentoml_home: Path, tmp_path: Path) -> None:
    env = {"FRAUD_EDGE_BUNDLE_DIR": str(tmp_path), "FRAUD_MODEL_VERSION": trained}
    # BentoML keeps restarting a worker whose __init__ fails, so the server never gets ready.
    server = BundleServer(env=env, bentoml_home=bentoml_home, target="runners.onnx:HgbOnnxRunner", ready_timeout_s=15)
    with pytest.raises((RuntimeError, TimeoutError)), server:
        pass
    assert "no manifest.json; not an edge bundle" in server.log_text()
