"""The Redis response cache against the real server: two API workers share it, a policy change moves on, Redis dies."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fraudserve.launcher import BundleServer
from fraudserve.stream.local_redis import LocalRedis
from models import registry
from models.transactions import generate_transactions
from tests.integration.test_rollout_server import metric
from tests.unit.test_rollout_core import PREFIX, derive_version

pytestmark = pytest.mark.integration

ADMIN_KEY = "cache-test-admin-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
ROWS = generate_transactions(60, seed=23).drop(columns="is_fraud").to_dict("records")


@pytest.fixture(scope="module")
def redis_server() -> Iterator[LocalRedis]:
    with LocalRedis() as server:
        yield server


@pytest.fixture(scope="module")
def bundle(
    trained: str, bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory, redis_server: LocalRedis
) -> Iterator[BundleServer]:
    for version, shift in (("r1", 0.0), ("r2", 1.5)):
        derive_version(trained, version, shift=shift)
    registry.registry_path(PREFIX).unlink(missing_ok=True)
    registry.promote(PREFIX, "r1", "stable")
    env = {
        "FRAUD_MODEL_PREFIX": PREFIX,
        "FRAUD_API_WORKERS": "2",
        "FRAUD_ADMIN_API_KEYS": ADMIN_KEY,
        "FRAUD_POLICY_STATE_FILE": str(tmp_path_factory.mktemp("cache") / "policy.json"),
        "FRAUD_POLICY_REFRESH_S": "0",  # every request sees the other worker's change at once
        "FRAUD_CACHE_ENABLED": "true",
        "FRAUD_CACHE_BACKEND": "redis",
        "FRAUD_CACHE_REDIS_URL": redis_server.url,
        "FRAUD_CACHE_REDIS_TIMEOUT_MS": "2000",  # 2 busy cores: no miss from a slow answer here
    }
    try:
        with BundleServer(env=env, bentoml_home=bentoml_home) as running:
            yield running
    finally:
        registry.registry_path(PREFIX).unlink(missing_ok=True)


def predict(bundle: BundleServer, rows: list[dict[str, Any]]) -> dict[str, Any]:
    # A new connection per request, so that the kernel spreads them over both workers.
    response = httpx.post(bundle.url + "/predict", json={"transactions": rows}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def set_policy(bundle: BundleServer, **policy: Any) -> None:
    response = httpx.post(bundle.url + "/admin/policy", json=policy, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text


def counts(bundle: BundleServer) -> dict[tuple[str, str], float]:
    return {
        (level, result): metric(bundle, "fraud_cache_requests_total", level=level, result=result)
        for level in ("memory", "redis")
        for result in ("hit", "miss")
    }


def repeat_until_both_workers_saw(bundle: BundleServer, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Send ``rows`` until each worker missed them in its own memory once (the memory misses count both)."""
    before = counts(bundle)
    first = predict(bundle, rows)
    deadline = time.monotonic() + 60
    while counts(bundle)[("memory", "miss")] - before[("memory", "miss")] < 2 * len(rows):
        assert time.monotonic() < deadline, "the requests never reached the second worker"
        again = predict(bundle, rows)
        assert [p["fraud_probability"] for p in again["predictions"]] == [
            p["fraud_probability"] for p in first["predictions"]
        ]
    after = counts(bundle)
    return {"first": first, **{f"{lvl}_{res}": after[(lvl, res)] - before[(lvl, res)] for lvl, res in after}}


def test_a_row_scored_by_one_worker_is_a_hit_on_the_other(bundle: BundleServer) -> None:
    set_policy(bundle, kind="single", stable="r1")
    rows = ROWS[0:10]
    seen = repeat_until_both_workers_saw(bundle, rows)
    assert {p["model_version"] for p in seen["first"]["predictions"]} == {"r1"}
    # The first worker scored the rows (Redis miss), the second found them in Redis.
    assert (seen["memory_miss"], seen["redis_miss"], seen["redis_hit"]) == (20, 10, 10)


def test_a_policy_or_version_change_is_a_miss(bundle: BundleServer) -> None:
    rows = ROWS[10:20]
    set_policy(bundle, kind="single", stable="r1")
    repeat_until_both_workers_saw(bundle, rows)
    set_policy(bundle, kind="single", stable="r1")  # the same version under a new policy revision
    seen = repeat_until_both_workers_saw(bundle, rows)
    assert (seen["redis_miss"], seen["redis_hit"]) == (10, 10)  # the old entries were not read
    set_policy(bundle, kind="single", stable="r2")
    seen = repeat_until_both_workers_saw(bundle, rows)
    assert {p["model_version"] for p in seen["first"]["predictions"]} == {"r2"}
    assert (seen["redis_miss"], seen["redis_hit"]) == (10, 10)


def test_requests_succeed_while_redis_is_dead(bundle: BundleServer, redis_server: LocalRedis) -> None:
    set_policy(bundle, kind="single", stable="r1")
    errors = metric(bundle, "fraud_cache_errors_total")
    redis_server.stop()
    for i in range(10):
        body = predict(bundle, ROWS[20 + i * 4 : 24 + i * 4])
        assert len(body["predictions"]) == 4
    assert metric(bundle, "fraud_cache_errors_total", level="redis") > errors
    assert "response cache: Redis" in bundle.log_text()
