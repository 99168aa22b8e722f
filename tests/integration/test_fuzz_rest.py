"""Schema-driven fuzzing of the REST API from its own OpenAPI document (schemathesis).

Valid and invalid requests for every operation in /docs.json: no answer may be a 5xx, and no
worker may die doing it (the same API and runner processes answer /readyz afterwards).
The default run is short; `FUZZ_EXAMPLES=1000 pytest -m slow tests/integration/test_fuzz_rest.py`
digs deeper.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import httpx
import psutil
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from fraudserve.launcher import BundleServer

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))


def server_processes(server: BundleServer) -> dict[int, float]:
    """pid -> start time of the server and every worker it spawned."""
    assert server.process is not None
    root = psutil.Process(server.process.pid)
    return {p.pid: p.create_time() for p in (root, *root.children(recursive=True))}


@pytest.fixture(scope="module")
def processes_before(server: BundleServer) -> dict[int, float]:
    return server_processes(server)


def fuzz_operation(operation: Any, mode: GenerationMode, base_url: str) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, timeout=30)
        assert response.status_code < 500, (case.as_curl_command(), response.status_code, response.text[:500])

    # No invalid request exists for an operation without parameters (GET /livez).
    with contextlib.suppress(Unsatisfiable):
        run()


def test_no_request_is_a_server_error(server: BundleServer, processes_before: dict[int, float]) -> None:
    # The schemathesis pytest loader (`from_fixture`) does not run on pytest 9, so the
    # operations are walked here: each one, valid and invalid inputs, as its own Hypothesis run.
    schema = schemathesis.openapi.from_url(server.url + "/docs.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert any(op.path == "/predict" for op in operations), [op.path for op in operations]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz_operation(operation, mode, server.url)


def test_no_worker_restarted(server: BundleServer, processes_before: dict[int, float]) -> None:
    assert httpx.get(server.url + "/readyz", timeout=30).status_code == 200
    assert server_processes(server) == processes_before
