"""The locustfile, headless, against the real bundle: reports are written and the SLO decides the exit code."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest

from fraudserve.launcher import PROJECT_ROOT, BundleServer, free_port
from loadtests.headless import locust_command
from loadtests.slo import SMOKE_P99_BUDGET_MS

pytestmark = pytest.mark.integration


def run_locust(command: list[str], timeout_s: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout_s, check=False)


def test_rest_scenario_meets_a_generous_slo_and_writes_reports(server: BundleServer, tmp_path: Path) -> None:
    prefix = tmp_path / "reports" / "rest"
    extra = ("--slo-p99-ms", str(SMOKE_P99_BUDGET_MS), "--multi-rows", "8")
    result = run_locust(locust_command(server.url, prefix, users=4, run_time="8s", extra=extra))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SLO met" in output
    with (tmp_path / "reports" / "rest_stats.csv").open() as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    assert {"/predict [1]", "/predict [8]", "Aggregated"} <= set(rows), (rows, output)
    assert int(rows["Aggregated"]["Request Count"]) > 20
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    assert "/predict [1]" in (tmp_path / "reports" / "rest.html").read_text()


def test_a_missed_latency_budget_fails_the_run(server: BundleServer, tmp_path: Path) -> None:
    result = run_locust(
        locust_command(server.url, tmp_path / "slow", users=2, run_time="3s", extra=("--slo-p99-ms", "0.01"))
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "SLO MISSED" in output and "p99" in output


def test_errors_over_budget_fail_the_run(tmp_path: Path) -> None:
    # Nothing listens there: every request fails, far above the 0.1 % error budget.
    result = run_locust(locust_command(f"http://127.0.0.1:{free_port()}", tmp_path / "down", users=2, run_time="2s"))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "error rate" in output
