"""Staged rollouts against the real server: canary split, sticky A/B, shadow, blue-green, cache, reload."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import tritonclient.grpc as tgrpc

from fraudserve.launcher import BundleServer
from models import registry
from models.transactions import TRANSACTION_SCHEMA, generate_transactions
from tests.integration.test_oip_transports import triton_inputs
from tests.unit.test_rollout_core import PREFIX, derive_version

pytestmark = pytest.mark.integration

ADMIN_KEY = "rollout-test-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def bundle(trained: str, bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BundleServer]:
    for version, shift, corrupt in (("r1", 0.0, False), ("r2", 1.5, False), ("rbroken", 0.0, True)):
        derive_version(trained, version, shift=shift, corrupt=corrupt)
    registry.registry_path(PREFIX).unlink(missing_ok=True)
    registry.promote(PREFIX, "r1", "stable")
    env = {
        "FRAUD_MODEL_PREFIX": PREFIX,
        "FRAUD_ADMIN_API_KEYS": ADMIN_KEY,
        "FRAUD_POLICY_STATE_FILE": str(tmp_path_factory.mktemp("rollout") / "policy.json"),
        "FRAUD_SHADOW_TIMEOUT_S": "5",
        "FRAUD_CACHE_ENABLED": "true",
    }
    try:
        with BundleServer(env=env, bentoml_home=bentoml_home) as running:
            yield running
    finally:
        registry.registry_path(PREFIX).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def client(bundle: BundleServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=bundle.url, timeout=30) as http:
        yield http


ROWS = generate_transactions(200, seed=17).drop(columns="is_fraud").to_dict("records")


def predict(client: httpx.Client, rows: list[dict[str, Any]], key: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"transactions": rows}
    if key is not None:
        body["routing_key"] = key
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def set_policy(client: httpx.Client, **policy: Any) -> dict[str, Any]:
    response = client.post("/admin/policy", json=policy, headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


def metric(server: BundleServer, name: str, **labels: str) -> float:
    total = 0.0
    for line in server.metrics().splitlines():
        match = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total += float(match.group(2))
    return total


def test_admin_routes_need_the_admin_key(client: httpx.Client) -> None:
    assert client.post("/admin/policy/get", json={}).status_code == 401
    assert client.post("/admin/rollback", json={}, headers={"Authorization": "Bearer nope"}).status_code == 401
    state = client.post("/admin/policy/get", json={}, headers=AUTH).json()
    assert state["versions"] == {"stable": "r1"}
    bad = client.post("/admin/policy", json={"kind": "canary", "percent": 5}, headers=AUTH)
    assert bad.status_code == 400 and "candidate" in bad.text


def test_canary_split_within_tolerance(bundle: BundleServer, client: httpx.Client) -> None:
    state = set_policy(client, kind="canary", stable="stable", candidate="r2", percent=25)
    assert state["versions"] == {"stable": "r1", "candidate": "r2"} and state["warm_up"] == {"r1": "ok", "r2": "ok"}
    before = metric(bundle, "fraud_variant_requests_total", variant="canary", version="r2")
    served = [predict(client, [ROWS[i % 50]])["predictions"][0] for i in range(300)]
    canary = [p for p in served if p["variant"] == "canary"]
    assert {p["model_version"] for p in canary} == {"r2"}
    assert {p["model_version"] for p in served if p not in canary} == {"r1"}
    assert 0.25 - 0.10 < len(canary) / len(served) < 0.25 + 0.10  # +-4 standard deviations of 300 draws (2.5%)
    assert metric(bundle, "fraud_variant_requests_total", variant="canary", version="r2") - before == len(canary)


def test_ab_is_sticky_per_routing_key(client: httpx.Client) -> None:
    set_policy(client, kind="ab", stable="r1", candidate="r2", percent=50, salt="exp-7")
    seen: dict[str, set[str]] = {}
    for _ in range(3):
        for i in range(20):
            body = predict(client, [ROWS[i]], key=f"customer-{i}")
            seen.setdefault(f"customer-{i}", set()).add(body["predictions"][0]["variant"])
    assert all(len(variants) == 1 for variants in seen.values())
    assert set().union(*seen.values()) == {"a", "b"}
    unkeyed = predict(client, [ROWS[0]])
    assert unkeyed["predictions"][0]["variant"] == "a_unkeyed" and "routing_key" in unkeyed["routing_note"]
    too_long = client.post("/predict", json={"transactions": [ROWS[0]], "routing_key": "k" * 300})
    assert too_long.status_code == 400 and "routing_key" in too_long.text


def test_a_policy_naming_a_broken_version_is_refused_and_traffic_goes_on(client: httpx.Client) -> None:
    """rbroken's hgb artifact fails its hash check: warmed up before the switch, refused with 409."""
    set_policy(client, kind="single", stable="r1")
    stop = threading.Event()
    live: list[tuple[int, str]] = []

    def traffic() -> None:
        with httpx.Client(base_url=client.base_url, timeout=30) as own:
            while not stop.is_set():
                response = own.post("/predict", json={"transactions": [ROWS[1]]})
                ok = response.status_code == 200
                live.append((response.status_code, response.json()["predictions"][0]["model_version"] if ok else ""))

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        for policy in (
            {"kind": "canary", "stable": "r1", "candidate": "rbroken", "percent": 50},
            {"kind": "shadow", "stable": "r1", "candidate": "rbroken"},
            {"kind": "blue_green", "blue": "r1", "green": "rbroken", "active": "green"},
        ):
            refused = client.post("/admin/policy", json=policy, headers=AUTH)
            assert refused.status_code == 409, refused.text
            body = refused.json()
            assert (body["error"], body["field"]) == ("conflict", "policy")
            assert "version rbroken: hgb:" in body["message"] and "sha256" in body["message"], body
    finally:
        stop.set()
        sender.join()
    assert live and set(live) == {(200, "r1")}
    state = client.post("/admin/policy/get", json={}, headers=AUTH).json()
    assert state["versions"] == {"stable": "r1"}
    assert {p["model_version"] for p in predict(client, ROWS[:20])["predictions"]} == {"r1"}
    assert client.post("/admin/rollback", json={}, headers=AUTH).status_code == 200  # still possible
    set_policy(client, kind="single", stable="r1")


def test_shadow_scores_beside_the_served_version(bundle: BundleServer, client: httpx.Client) -> None:
    set_policy(client, kind="shadow", stable="r1", candidate="r2")
    for i in range(10):
        body = predict(client, ROWS[i * 3 : i * 3 + 3])
        assert {(p["model_version"], p["variant"]) for p in body["predictions"]} == {("r1", "stable")}
    deadline = time.monotonic() + 20
    while metric(bundle, "fraud_shadow_comparisons_total", outcome="agree") == 0:
        assert time.monotonic() < deadline, "shadow comparisons were not counted"
        time.sleep(0.3)


def test_blue_green_switch_and_rollback_without_restart(client: httpx.Client) -> None:
    set_policy(client, kind="blue_green", blue="r1", green="r2", active="blue")
    set_policy(client, kind="blue_green", blue="r1", green="r2", active="green")
    assert predict(client, [ROWS[7]])["predictions"][0]["model_version"] == "r2"
    rolled = client.post("/admin/rollback", json={}, headers=AUTH)
    assert rolled.status_code == 200 and rolled.json()["policy"]["active"] == "blue"
    assert predict(client, [ROWS[7]])["predictions"][0]["model_version"] == "r1"


def test_cache_hits_after_repeats_and_misses_after_a_version_change(bundle: BundleServer, client: httpx.Client) -> None:
    set_policy(client, kind="single", stable="r1")  # a change: the cache is empty now
    rows = ROWS[150:160]
    hits, misses = (metric(bundle, "fraud_cache_requests_total", result=r) for r in ("hit", "miss"))
    first = predict(client, rows)
    again = predict(client, rows)
    assert again["predictions"] == [{**p, "latency_ms": again["latency_ms"]} for p in first["predictions"]]
    assert metric(bundle, "fraud_cache_requests_total", result="hit") - hits == 10
    assert metric(bundle, "fraud_cache_requests_total", result="miss") - misses == 10
    set_policy(client, kind="single", stable="r2")
    changed = predict(client, rows)
    assert {p["model_version"] for p in changed["predictions"]} == {"r2"}
    assert metric(bundle, "fraud_cache_requests_total", result="miss") - misses == 20


def test_registry_promotion_takes_effect_on_reload(client: httpx.Client) -> None:
    set_policy(client, kind="single", stable="stable")
    assert predict(client, [ROWS[3]])["predictions"][0]["model_version"] == "r1"
    registry.promote(PREFIX, "r2", "stable")
    reloaded = client.post("/admin/reload", json={}, headers=AUTH)
    assert reloaded.status_code == 200 and reloaded.json()["versions"] == {"stable": "r2"}
    assert predict(client, [ROWS[3]])["predictions"][0]["model_version"] == "r2"
    assert client.post("/model", json={}).json()["version"] == "r2"
    assert client.get("/v2/models/roll_logreg").json()["versions"] == ["r2"]
    assert oip_infer(client, "/v2/models/roll_logreg/infer", [ROWS[3]]).json()["model_version"] == "r2"
    registry.rollback(PREFIX, "stable")
    client.post("/admin/reload", json={}, headers=AUTH).raise_for_status()
    assert predict(client, [ROWS[3]])["predictions"][0]["model_version"] == "r1"


def oip_infer(client: httpx.Client, path: str, rows: list[dict[str, Any]], **parameters: Any) -> httpx.Response:
    """One JSON tensor per feature, as model metadata advertises (BYTES: the category string)."""
    kinds = {"float": "FP64", "int": "INT64", "bool": "BOOL", "category": "BYTES"}
    inputs = [
        {"name": f.name, "datatype": kinds[f.kind], "shape": [len(rows)], "data": [row[f.name] for row in rows]}
        for f in TRANSACTION_SCHEMA.features
    ]
    body: dict[str, Any] = {"inputs": inputs}
    if parameters:
        body["parameters"] = parameters
    return client.post(path, json=body)


def test_oip_answers_name_the_version_that_scored(client: httpx.Client) -> None:
    set_policy(client, kind="ab", stable="r1", candidate="r2", percent=50, salt="exp-oip")
    expected = {f"c{i}": predict(client, [ROWS[i]], key=f"c{i}")["predictions"][0] for i in range(16)}
    assert {p["model_version"] for p in expected.values()} == {"r1", "r2"}
    for i, (key, prediction) in enumerate(expected.items()):
        answer = oip_infer(client, "/v2/models/roll_ensemble/infer", [ROWS[i]], routing_key=key)
        assert answer.status_code == 200, answer.text
        doc = answer.json()
        assert doc["model_version"] == prediction["model_version"], (key, doc)
        probability = next(o for o in doc["outputs"] if o["name"] == "fraud_probability")["data"][0]
        assert probability == pytest.approx(prediction["fraud_probability"])
    pinned = oip_infer(client, "/v2/models/roll_ensemble/versions/r2/infer", ROWS[:5]).json()
    assert pinned["model_version"] == "r2"  # explicit: scored by r2 whatever the policy says
    assert predict(client, ROWS[:5], key="c0")["predictions"][0]["model_version"] in {"r1", "r2"}
    missing = oip_infer(client, "/v2/models/roll_ensemble/versions/nope/infer", ROWS[:1])
    assert missing.status_code == 404 and "no version 'nope'" in missing.text
    set_policy(client, kind="blue_green", blue="r1", green="r2", active="green")
    member = oip_infer(client, "/v2/models/roll_hgb/infer", ROWS[:2]).json()
    assert member["model_version"] == "r2"
    assert client.get("/v2/models/roll_ensemble").json()["versions"] == ["r2"]
    index = client.post("/v2/repository/index", json={}).json()
    assert [m["version"] for m in index][:4] == ["r2"] * 4 and {m["version"] for m in index} == {"r1", "r2"}
    info = client.post("/model", json={}).json()
    assert (info["version"], info["model_versions"]["ensemble"]) == ("r2", "roll_ensemble:r2")
    set_policy(client, kind="single", stable="r1")


def test_grpc_routing_key_keeps_a_client_on_its_variant(bundle: BundleServer, client: httpx.Client) -> None:
    set_policy(client, kind="ab", stable="r1", candidate="r2", percent=50, salt="exp-grpc")
    grpc_client = tgrpc.InferenceServerClient(url=f"127.0.0.1:{bundle.grpc_port}")
    try:
        expected, answered = {}, {}
        for i in range(16):
            key = f"g{i}"
            expected[key] = predict(client, [ROWS[i]], key=key)["predictions"][0]["model_version"]
            inputs = triton_inputs(tgrpc, pd.DataFrame([ROWS[i]]))
            result = grpc_client.infer(f"{PREFIX}_ensemble", inputs, parameters={"routing_key": key})
            answered[key] = result.get_response().model_version
    finally:
        grpc_client.close()
        set_policy(client, kind="single", stable="r1")
    assert set(expected.values()) == {"r1", "r2"}
    assert answered == expected
