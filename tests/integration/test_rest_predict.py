"""The real bundle under `bentoml serve`: REST /predict, errors, readiness, metrics, batching."""

from __future__ import annotations

import asyncio
import json
import math
import re

import httpx
import numpy as np
import pytest

from fraudserve.launcher import BundleServer
from models.transactions import generate_transactions

pytestmark = pytest.mark.integration


def rows(n: int, seed: int = 21) -> list[dict[str, object]]:
    return generate_transactions(n, seed=seed).drop(columns="is_fraud").to_dict("records")


def post(server: BundleServer, body: object, **kwargs: object) -> httpx.Response:
    return httpx.post(server.url + "/predict", json=body, timeout=30, **kwargs)  # type: ignore[arg-type]


def test_one_transaction_and_a_list(server: BundleServer) -> None:
    sample = rows(5)
    one = post(server, {"transactions": sample[0]})
    assert one.status_code == 200, one.text
    body = one.json()
    assert len(body["predictions"]) == 1
    p = body["predictions"][0]
    assert 0.0 <= p["fraud_probability"] <= 1.0
    assert p["is_fraud"] == (p["fraud_probability"] >= p["threshold"])
    assert set(p["scores"]) == {"hgb", "logreg", "iforest"}
    assert p["model_version"] == "vtest1"
    assert body["model_versions"]["ensemble"] == "fraud_ensemble:vtest1"
    assert body["runtimes"] == {"hgb": "onnx", "logreg": "onnx", "iforest": "onnx"}
    assert p["latency_ms"] > 0

    many = post(server, {"transactions": sample}).json()
    assert len(many["predictions"]) == 5
    assert many["predictions"][0]["fraud_probability"] == pytest.approx(p["fraud_probability"])


def test_large_request_takes_the_bulk_path_and_matches(server: BundleServer) -> None:
    sample = rows(300, seed=5)
    big = post(server, {"transactions": sample})
    assert big.status_code == 200, big.text
    small = [post(server, {"transactions": sample[i : i + 50]}).json() for i in range(0, 300, 50)]
    merged = [p["fraud_probability"] for part in small for p in part["predictions"]]
    np.testing.assert_allclose([p["fraud_probability"] for p in big.json()["predictions"]], merged, rtol=1e-12)
    assert 'path="bulk"' in server.metrics()


@pytest.mark.parametrize(
    ("transactions", "field"),
    [
        ({k: v for k, v in rows(1)[0].items() if k != "amount"}, "amount"),
        ({**rows(1)[0], "hour": "three"}, "hour"),
        ({**rows(1)[0], "hour": 24}, "hour"),
        ({**rows(1)[0], "merchant_category": "casino"}, "merchant_category"),
        ({**rows(1)[0], "amount": -5}, "amount"),
        ({**rows(1)[0], "unexpected": 1}, "unexpected"),
        ([rows(2)[0], {**rows(2)[1], "card_present": "perhaps"}], "card_present"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(server: BundleServer, transactions: object, field: str) -> None:
    response = post(server, {"transactions": transactions})
    assert response.status_code == 400, response.text
    assert field in response.text


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_rejected(server: BundleServer, value: float) -> None:
    body = json.dumps({"transactions": {**rows(1)[0], "amount": value}}, allow_nan=True)
    assert "NaN" in body or "Infinity" in body
    response = httpx.post(
        server.url + "/predict", content=body, headers={"content-type": "application/json"}, timeout=30
    )
    assert response.status_code == 400, response.text
    assert "amount" in response.text


def test_empty_list_and_too_many_rows(server: BundleServer) -> None:
    empty = post(server, {"transactions": []})
    assert empty.status_code == 400
    assert empty.json()["field"] == "transactions"
    too_many = post(server, {"transactions": [rows(1)[0]] * 10_001})
    assert too_many.status_code == 413
    assert too_many.json()["error"] == "payload_too_large"


def test_malformed_bodies_are_4xx(server: BundleServer) -> None:
    for content in (b"", b"{", b"[]", b'{"transactions": 5}', b'{"other": {}}'):
        response = httpx.post(
            server.url + "/predict", content=content, headers={"content-type": "application/json"}, timeout=30
        )
        assert 400 <= response.status_code < 500, (content, response.status_code, response.text)


def test_health_model_and_docs(server: BundleServer) -> None:
    assert httpx.get(server.url + "/livez", timeout=10).status_code == 200
    assert httpx.get(server.url + "/readyz", timeout=10).status_code == 200
    info = httpx.post(server.url + "/model", timeout=10).json()
    assert info["version"] == "vtest1"
    assert info["runtimes"] == {"hgb": "onnx", "logreg": "onnx", "iforest": "onnx"}
    assert info["metrics"]["ensemble"]["roc_auc"] > 0.9
    spec = httpx.get(server.url + "/docs.json", timeout=10).json()
    assert "/predict" in spec["paths"]
    assert "merchant_category" in json.dumps(spec["components"])


def test_concurrent_answers_equal_sequential_and_runners_batch(server: BundleServer) -> None:
    sample = rows(96, seed=77)
    sequential = [post(server, {"transactions": r}).json()["predictions"][0] for r in sample[:16]]

    async def fire() -> list[dict[str, object]]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            responses = await asyncio.gather(*(client.post("/predict", json={"transactions": r}) for r in sample))
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
        return [r.json()["predictions"][0] for r in responses]

    before = _batched_counts(server.metrics())
    concurrent = asyncio.run(fire())
    after = _batched_counts(server.metrics())

    for seq, conc in zip(sequential, concurrent[:16], strict=True):
        assert conc["fraud_probability"] == pytest.approx(seq["fraud_probability"], rel=1e-12)
        assert conc["scores"] == pytest.approx(seq["scores"], rel=1e-12)
    # Each answer reached its own caller: recompute one by one for a spread of rows.
    for i in (20, 50, 95):
        alone = post(server, {"transactions": sample[i]}).json()["predictions"][0]
        assert concurrent[i]["fraud_probability"] == pytest.approx(alone["fraud_probability"], rel=1e-12)

    calls = after["count"] - before["count"]
    scored_rows = after["sum"] - before["sum"]
    assert scored_rows == 96 * 3  # every row reached each of the three members exactly once
    assert calls < scored_rows, "no member ever scored a batch of more than one row"
    assert after["gt1"] - before["gt1"] > 0


def _batched_counts(metrics: str) -> dict[str, float]:
    out = {"count": 0.0, "sum": 0.0, "gt1": 0.0}
    le1 = 0.0
    for line in metrics.splitlines():
        # Entry batches are scored in the API worker (path "inprocess", the default) or by the runners ("batched").
        batched = 'path="batched"' in line or 'path="inprocess"' in line
        if not line.startswith("fraud_runner_batch_rows") or not batched:
            continue
        value = float(line.rsplit(" ", 1)[1])
        if line.startswith("fraud_runner_batch_rows_count"):
            out["count"] += value
        elif line.startswith("fraud_runner_batch_rows_sum"):
            out["sum"] += value
        elif 'le="1.0"' in line:
            le1 += value
    out["gt1"] = out["count"] - le1
    return out


def test_metrics_expose_model_latency_and_rows(server: BundleServer) -> None:
    post(server, {"transactions": rows(3)})
    text = server.metrics()
    assert re.search(r'fraud_model_latency_seconds_count\{.*model="hgb"', text)
    assert re.search(r'fraud_request_rows_count\{.*transport="rest"', text)
    assert "bentoml_service_request_duration_seconds" in text
    assert not math.isnan(_batched_counts(text)["count"])
