"""Schema-driven fuzzing of the REST API from its own OpenAPI document (schemathesis, every check).

`st run /docs.json --checks all` against the real server with API keys and an admin key set, so every route,
the admin ones included, is exercised: no 5xx, every status and body as documented, bad input refused, valid
input accepted, auth enforced, undocumented methods refused. Then no worker may have died doing it (the same
API and runner processes answer /readyz afterwards). The default run is short and seeded (deterministic);
`FUZZ_EXAMPLES=1000 pytest tests/integration/test_fuzz_rest.py` digs deeper.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from fraudserve.launcher import BundleServer

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
CONFIG = Path(__file__).with_name("schemathesis.toml")
USER_KEY = "fuzz-user-key-0123456789"
ADMIN_KEY = "fuzz-admin-key-0123456789"


def server_processes(server: BundleServer) -> dict[int, float]:
    """pid -> start time of the server and every worker it spawned."""
    assert server.process is not None
    root = psutil.Process(server.process.pid)
    return {p.pid: p.create_time() for p in (root, *root.children(recursive=True))}


@pytest.fixture(scope="module")
def keyed(trained: str, bentoml_home: Path) -> Iterator[BundleServer]:
    env = {"FRAUD_API_KEYS": USER_KEY, "FRAUD_ADMIN_API_KEYS": ADMIN_KEY}
    with BundleServer(env=env, bentoml_home=bentoml_home) as running:
        yield running


def test_every_schemathesis_check_passes_on_every_route(keyed: BundleServer, tmp_path: Path) -> None:
    before = server_processes(keyed)
    st = Path(sys.executable).with_name("st")
    command = [str(st), "--config-file", str(CONFIG), "run", keyed.url + "/docs.json", "--checks", "all"]
    command += ["-H", f"Authorization: Bearer {ADMIN_KEY}", "--max-examples", str(EXAMPLES), "--seed", "7"]
    # In a folder of its own: schemathesis keeps a cache (.schemathesis/) in its working directory.
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False, cwd=tmp_path)
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    assert "No issues found" in result.stdout, report
    tested = re.search(r"Tested:\s+(\d+)", result.stdout)
    assert tested and int(tested.group(1)) >= 11, report  # /predict, /model x2, /admin/* x4 and BentoML's 4
    assert httpx.get(keyed.url + "/readyz", timeout=30).status_code == 200
    assert server_processes(keyed) == before, "a worker restarted while being fuzzed"


def test_the_document_describes_every_error_and_the_row_bounds(keyed: BundleServer) -> None:
    spec = httpx.get(keyed.url + "/docs.json", timeout=30).json()
    predict = spec["paths"]["/predict"]["post"]
    assert {"400", "401", "403", "413", "429", "503", "504"} <= set(predict["responses"])
    for status, response in predict["responses"].items():
        if status != "200":
            assert response["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    many = next(
        o
        for o in spec["components"]["schemas"]["PredictRequest"]["properties"]["transactions"]["anyOf"]
        if o.get("type") == "array"
    )
    assert many["minItems"] == 1 and many["maxItems"] == 10_000
    assert "409" in spec["paths"]["/admin/policy"]["post"]["responses"]
    error = httpx.post(
        keyed.url + "/admin/policy",
        json={"kind": "canary"},
        timeout=30,
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert error.status_code == 400
    assert set(error.json()) == {"error", "message", "field"}
