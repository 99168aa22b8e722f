"""Restart the whole service in the middle of a batch job: no accepted row is lost or doubled.

The batch client (`fraud-batch --engine server`) retries connection errors and 503s, so a job
that is running when the service goes down finishes once it is back, with every row scored once
and the same scores as the in-process engine. (For streams, the same guarantee is shown by
tests/integration/test_stream_redis.py: a killed consumer's messages are reclaimed and scored once.)
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from fraudserve.launcher import BundleServer, free_port
from models.transactions import generate_transactions

pytestmark = pytest.mark.integration

ROWS = 3_000


def _scored_rows(server: BundleServer) -> float:
    total = 0.0
    for line in server.metrics().splitlines():
        if line.startswith("fraud_request_rows_sum") and 'transport="rest"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_service_restart_mid_batch_loses_no_row(trained: str, bentoml_home: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    generate_transactions(ROWS, seed=52).drop(columns="is_fraud").to_csv(source, index=False)
    fraud_batch = str(Path(sys.executable).with_name("fraud-batch"))
    expected_out = tmp_path / "local.csv"
    subprocess.run([fraud_batch, str(source), str(expected_out)], check=True, capture_output=True, timeout=300)

    port, env = free_port(), {"FRAUD_GRPC_ENABLED": "false"}
    first = BundleServer(env=env, bentoml_home=bentoml_home, port=port).start()
    served_out = str(tmp_path / "served.csv")
    small_steps = ["--chunk-rows", "300", "--request-rows", "25", "--concurrency", "2", "--retries", "12"]
    job = subprocess.Popen(
        [fraud_batch, str(source), served_out, "--engine", "server", "--url", first.url, *small_steps],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    second = None
    try:
        deadline = time.monotonic() + 120
        while _scored_rows(first) < 300 and time.monotonic() < deadline:
            assert job.poll() is None, job.communicate()[0].decode()
            time.sleep(0.2)
        first.stop()  # the whole service goes down while the job has requests in flight
        assert job.poll() is None, "the job finished before the restart: make it bigger"
        second = BundleServer(env=env, bentoml_home=bentoml_home, port=port).start()
        output, _ = job.communicate(timeout=300)
        assert job.returncode == 0, output.decode()
        assert _scored_rows(second) > 0, "nothing was scored after the restart"
    finally:
        first.stop()
        if second is not None:
            second.stop()
        if job.poll() is None:
            job.kill()

    served = pd.read_csv(tmp_path / "served.csv")
    local = pd.read_csv(expected_out)
    assert len(served) == ROWS
    assert served.iloc[:, 0].tolist() == list(range(ROWS))  # every row id once, in order
    pd.testing.assert_series_equal(served["fraud_probability"], local["fraud_probability"], rtol=1e-12)
    assert (served["is_fraud"] == local["is_fraud"]).all()
