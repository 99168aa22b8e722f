"""The real bundle with API keys, a rate limit and small limits: statuses, bodies, no crash."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fraudserve.launcher import BundleServer
from models.transactions import generate_transactions

pytestmark = pytest.mark.integration

KEY = "integration-predict-key-0001"
ADMIN_KEY = "integration-admin-key-000001"
# Distinct clients for the overload test: the rate limit is per key, shedding is per worker.
CROWD = [f"integration-crowd-key-{i:04d}" for i in range(48)]
BODY_LIMIT = 256 * 1024
INFLIGHT = 4


@pytest.fixture(scope="module")
def guarded(trained: str, bentoml_home: Path) -> Iterator[BundleServer]:
    env = {
        "FRAUD_API_KEYS": json.dumps([KEY, *CROWD]),
        "FRAUD_ADMIN_API_KEYS": ADMIN_KEY,
        "FRAUD_RATE_LIMIT_RPS": "0.2",
        "FRAUD_RATE_LIMIT_BURST": "10",
        "FRAUD_MAX_REQUEST_BODY_BYTES": str(BODY_LIMIT),
        "FRAUD_MAX_INFLIGHT_REQUESTS": str(INFLIGHT),
    }
    with BundleServer(env=env, bentoml_home=bentoml_home) as running:
        yield running


def rows(n: int, seed: int = 3) -> list[dict[str, object]]:
    return generate_transactions(n, seed=seed).drop(columns="is_fraud").to_dict("records")


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_keys_guard_predict_v2_and_admin_but_not_probes(guarded: BundleServer) -> None:
    url = guarded.url
    body = {"transactions": rows(1)}
    missing = httpx.post(url + "/predict", json=body, timeout=30)
    assert missing.status_code == 401, missing.text
    assert missing.json()["error"] == "unauthorized"
    assert httpx.post(url + "/predict", json=body, headers=bearer("x" * 30), timeout=30).status_code == 401
    ok = httpx.post(url + "/predict", json=body, headers=bearer(KEY), timeout=30)
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 1
    assert httpx.post(url + "/model", headers=bearer(ADMIN_KEY), timeout=30).status_code == 200

    # The OIP REST app mounted with @bentoml.asgi_app sits behind the same middleware.
    assert httpx.get(url + "/v2/models/fraud_ensemble", timeout=30).status_code == 401
    assert httpx.get(url + "/v2/models/fraud_ensemble", headers=bearer(KEY), timeout=30).status_code == 200
    assert httpx.get(url + "/v2/health/ready", timeout=30).status_code == 200

    assert httpx.get(url + "/admin/anything", headers=bearer(KEY), timeout=30).status_code == 403
    assert httpx.get(url + "/admin/anything", timeout=30).status_code == 401
    for open_path in ("/livez", "/readyz", "/metrics", "/docs.json"):
        assert httpx.get(url + open_path, timeout=30).status_code == 200, open_path


def test_keys_guard_grpc_too(guarded: BundleServer) -> None:
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{guarded.grpc_port}")
    tensor = grpcclient.InferInput("amount", [1], "FP64")
    tensor.set_data_from_numpy(np.array([10.0]))
    with pytest.raises(InferenceServerException) as refused:
        client.infer("fraud_ensemble", [tensor], timeout=30)
    assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
    # With the key the call is authorised: it then fails validation (9 features missing), not auth.
    with pytest.raises(InferenceServerException) as invalid:
        client.infer("fraud_ensemble", [tensor], headers=bearer(CROWD[-2]), timeout=30)
    assert invalid.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert client.is_server_live()  # health RPCs stay open
    client.close()


def test_body_limit_declared_and_streamed(guarded: BundleServer) -> None:
    sample = rows(2000)
    assert len(json.dumps({"transactions": sample})) > BODY_LIMIT
    big = httpx.post(guarded.url + "/predict", json={"transactions": sample}, headers=bearer(KEY), timeout=30)
    assert big.status_code == 413 and big.json()["error"] == "payload_too_large"

    def chunked() -> Iterator[bytes]:
        payload = json.dumps({"transactions": sample}).encode()
        for i in range(0, len(payload), 16 * 1024):
            yield payload[i : i + 16 * 1024]

    streamed = httpx.post(guarded.url + "/predict", content=chunked(), headers=bearer(KEY), timeout=30)
    assert streamed.status_code == 413, streamed.text
    assert streamed.json()["error"] == "payload_too_large"
    after = httpx.post(guarded.url + "/predict", json={"transactions": sample[:50]}, headers=bearer(KEY), timeout=30)
    assert after.status_code == 200


def test_rate_limit_answers_429_with_retry_after(guarded: BundleServer) -> None:
    key = CROWD[-1]
    statuses = []
    for _ in range(14):
        response = httpx.post(guarded.url + "/predict", json={"transactions": rows(1)}, headers=bearer(key), timeout=30)
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert response.json()["error"] == "rate_limited"
            assert int(response.headers["retry-after"]) >= 1
    assert statuses[:10] == [200] * 10
    assert 429 in statuses[10:]
    assert httpx.post(
        guarded.url + "/predict", json={"transactions": rows(1)}, headers=bearer(KEY), timeout=30
    ).is_success


def test_overload_is_shed_quickly_with_503_and_nothing_else(guarded: BundleServer) -> None:
    body = {"transactions": rows(300, seed=9)}

    async def fire() -> list[tuple[int, float, httpx.Response]]:
        limits = httpx.Limits(max_connections=len(CROWD))
        async with httpx.AsyncClient(base_url=guarded.url, timeout=60, limits=limits) as client:

            async def one(key: str) -> tuple[int, float, httpx.Response]:
                started = time.perf_counter()
                response = await client.post("/predict", json=body, headers=bearer(key))
                return response.status_code, time.perf_counter() - started, response

            return await asyncio.gather(*(one(k) for k in CROWD[:-1]))

    results = asyncio.run(fire())
    statuses = [status for status, _, _ in results]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= INFLIGHT
    shed = [(elapsed, response) for status, elapsed, response in results if status == 503]
    assert shed, "47 concurrent 300-row requests against 4 slots were never shed"
    for _, response in shed:
        assert response.json()["error"] == "unavailable" and response.headers["retry-after"] == "1"
    # Shedding costs one round trip: the median shed answer beats the median served one.
    served_s = sorted(elapsed for status, elapsed, _ in results if status == 200)
    shed_s = sorted(elapsed for elapsed, _ in shed)
    assert shed_s[len(shed_s) // 2] < served_s[len(served_s) // 2], (shed_s, served_s)
    assert httpx.get(guarded.url + "/readyz", timeout=30).status_code == 200


def test_batch_server_engine_sends_its_key(
    guarded: BundleServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fraudserve.batch.cli import main as fraud_batch

    source = tmp_path / "in.csv"
    generate_transactions(40, seed=8).drop(columns="is_fraud").to_csv(source, index=False)
    args = [str(source), str(tmp_path / "out.csv"), "--engine", "server", "--url", guarded.url, "--retries", "0"]
    monkeypatch.delenv("FRAUD_BATCH_API_KEY", raising=False)
    assert fraud_batch(args) != 0
    monkeypatch.setenv("FRAUD_BATCH_API_KEY", CROWD[-3])
    assert fraud_batch(args) == 0
    assert len((tmp_path / "out.csv").read_text().splitlines()) == 41
