"""Staged rollouts with two API workers (FRAUD_API_WORKERS=2) behind one port: the workers converge.

BentoML's workers share the HTTP port, and every worker starts a gRPC server on the shared
gRPC port (SO_REUSEPORT); each new connection lands on one worker. A worker is told apart by
the ``worker_pid`` of ``/admin/policy/get``, asked over a fresh connection each time. One
server for the module: each 2-worker server costs ~30-60 s to start here.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import tritonclient.grpc as tgrpc

from fraudserve.launcher import BundleServer
from tests.integration.test_oip_transports import frame, triton_inputs
from tests.integration.test_rollout_server import ADMIN_KEY, AUTH, ROWS
from tests.unit.test_rollout_core import PREFIX, derive_version

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pair(trained: str, bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BundleServer]:
    for version, shift in (("r1", 0.0), ("r2", 1.5)):
        derive_version(trained, version, shift=shift)
    env = {
        "FRAUD_API_WORKERS": "2",
        "FRAUD_MODEL_PREFIX": PREFIX,
        "FRAUD_MODEL_VERSION": "r1",
        "FRAUD_ADMIN_API_KEYS": ADMIN_KEY,
        "FRAUD_POLICY_STATE_FILE": str(tmp_path_factory.mktemp("rollout-workers") / "policy.json"),
        "FRAUD_POLICY_REFRESH_S": "0.2",
    }
    with BundleServer(env=env, bentoml_home=bentoml_home, ready_timeout_s=300) as running:
        yield running


def worker_states(
    server: BundleServer, *, until: Callable[[dict[str, Any]], bool] | None = None, timeout_s: float = 30.0
) -> dict[int, dict[str, Any]]:
    """The policy state of each worker (by pid), polled over fresh connections until both workers answered
    and ``until(state)`` holds for each."""
    states: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = httpx.post(server.url + "/admin/policy/get", json={}, headers=AUTH, timeout=30)
        assert response.status_code == 200, response.text
        state = response.json()
        states[state["worker_pid"]] = state
        if len(states) == 2 and (until is None or all(until(s) for s in states.values())):
            return states
        time.sleep(0.05)
    raise AssertionError(f"the two workers did not converge in {timeout_s}s: {states}")


def serving(revision: int, versions: dict[str, str]) -> Callable[[dict[str, Any]], bool]:
    return lambda state: state["revision"] == revision and state["versions"] == versions


def post_policy(server: BundleServer, policy: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.url + "/admin/policy", json=policy, headers=AUTH, timeout=60)


def test_a_policy_change_reaches_both_workers(pair: BundleServer) -> None:
    before = worker_states(pair)
    assert {s["versions"]["stable"] for s in before.values()} == {"r1"}
    changed = post_policy(pair, {"kind": "single", "stable": "r2"})
    assert changed.status_code == 200, changed.text
    revision = changed.json()["revision"]
    worker_states(pair, until=serving(revision, {"stable": "r2"}))
    served = {
        httpx.post(pair.url + "/predict", json={"transactions": [ROWS[i]]}, timeout=30).json()["predictions"][0][
            "model_version"
        ]
        for i in range(20)
    }
    assert served == {"r2"}


def race(server: BundleServer, policies: list[dict[str, Any]]) -> list[int]:
    """POST the policies at once, each over its own connection (so possibly to either worker)."""
    start = threading.Barrier(len(policies))

    def write(policy: dict[str, Any]) -> int:
        start.wait()
        return post_policy(server, policy).status_code

    with ThreadPoolExecutor(len(policies)) as pool:
        return list(pool.map(write, policies))


def test_concurrent_policy_writes_leave_one_policy_on_every_worker(pair: BundleServer) -> None:
    state_file = Path(pair.env["FRAUD_POLICY_STATE_FILE"])
    for _ in range(3):
        policies = [{"kind": "single", "stable": v} for v in ("r1", "r2")]
        statuses = race(pair, policies)
        assert set(statuses) <= {200, 409} and 200 in statuses, statuses
        doc = json.loads(state_file.read_text())
        if statuses.count(200) == 1:  # the loser got 409: the winner's policy is the file's
            assert doc["current"] == {**doc["current"], **policies[statuses.index(200)]}, (statuses, doc)
        worker_states(pair, until=serving(doc["revision"], {"stable": doc["current"]["stable"]}))


def test_two_grpc_clients_on_the_shared_port_are_both_served(pair: BundleServer) -> None:
    changed = post_policy(pair, {"kind": "blue_green", "blue": "r1", "green": "r2", "active": "green"})
    assert changed.status_code == 200, changed.text
    revision = changed.json()["revision"]
    worker_states(pair, until=serving(revision, {"blue": "r1", "green": "r2"}))
    clients = [tgrpc.InferenceServerClient(url=f"127.0.0.1:{pair.grpc_port}") for _ in range(4)]
    try:
        for n, client in enumerate(clients):
            df = frame(3, seed=n)
            result = client.infer(f"{PREFIX}_ensemble", triton_inputs(tgrpc, df)).get_response()
            assert result.model_version == "r2", (n, result)
            member = client.infer(f"{PREFIX}_logreg", triton_inputs(tgrpc, df)).get_response()
            assert member.model_version == "r2"
    finally:
        for client in clients:
            client.close()
