"""The guards with two API workers (the default): every worker refuses a flooding client, REST and gRPC alike.

Rate limits are kept per worker (README "Security"), so a client may get up to one budget per worker, never more.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

from fraudserve.launcher import BundleServer
from models.transactions import generate_transactions
from tests.integration.test_oip_transports import frame, triton_inputs

pytestmark = pytest.mark.integration

WORKERS = 2
RATE_RPS = 2.0
BURST = 5
KEY = "two-workers-key-0123456789"


@pytest.fixture(scope="module")
def pair(trained: str, bentoml_home: Path) -> Iterator[BundleServer]:
    env = {
        "FRAUD_API_WORKERS": str(WORKERS),
        "FRAUD_API_KEYS": KEY,
        "FRAUD_RATE_LIMIT_RPS": str(RATE_RPS),
        "FRAUD_RATE_LIMIT_BURST": str(BURST),
        "FRAUD_MAX_REQUEST_BODY_BYTES": "65536",
    }
    with BundleServer(env=env, bentoml_home=bentoml_home, ready_timeout_s=300) as running:
        yield running


def test_a_rest_flood_is_refused_by_both_workers_within_their_budgets(pair: BundleServer) -> None:
    row = generate_transactions(1, seed=4).drop(columns="is_fraud").to_dict("records")[0]
    headers = {"Authorization": f"Bearer {KEY}"}

    # First, while the budgets are full (after the flood this key would get 429 before its body is looked at).
    too_big = httpx.post(pair.url + "/predict", content=b"{" + b" " * 70_000 + b"}", headers=headers, timeout=30)
    assert too_big.status_code == 413 and too_big.json()["error"] == "payload_too_large"

    def one(_: int) -> int:
        # A fresh connection each time, so the kernel spreads the requests over both workers.
        return httpx.post(pair.url + "/predict", json={"transactions": row}, headers=headers, timeout=30).status_code

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = Counter(pool.map(one, range(120)))
    elapsed = time.monotonic() - started
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[429] > 0, statuses
    assert statuses[200] <= WORKERS * (BURST + RATE_RPS * elapsed) + 1, (statuses, elapsed)


def test_a_grpc_flood_on_the_shared_port_is_refused(pair: BundleServer) -> None:
    time.sleep(BURST / RATE_RPS + 1)  # the REST test above spent this key's budgets: let them refill
    inputs = triton_inputs(tgrpc, frame(1, seed=6))
    codes: Counter[str] = Counter()
    for _ in range(40):
        client = tgrpc.InferenceServerClient(f"127.0.0.1:{pair.grpc_port}")  # a new connection, either worker
        try:
            client.infer("fraud_ensemble", inputs, headers={"authorization": f"Bearer {KEY}"}, client_timeout=30)
            codes["OK"] += 1
        except InferenceServerException as exc:
            codes[str(exc.status())] += 1
        finally:
            client.close()
    assert set(codes) <= {"OK", "StatusCode.RESOURCE_EXHAUSTED"}, codes
    assert codes["StatusCode.RESOURCE_EXHAUSTED"] > 0 and codes["OK"] > 0, codes
