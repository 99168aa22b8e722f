"""Locust load test of the fraud bundle: REST ``POST /predict`` and OIP gRPC ``ModelInfer``.

Run from the project root (see loadtests/README.md for the container and the numbers):

    # web UI on http://127.0.0.1:8089 against a local `make serve`
    .venv/bin/locust -f loadtests/locustfile.py --host http://127.0.0.1:3000

    # headless, REST only, CSV + HTML reports in build/loadtests/; exit 1 when an SLO is missed
    .venv/bin/locust -f loadtests/locustfile.py --config loadtests/headless.conf --host http://127.0.0.1:3000 RestUser

    # gRPC only (OIP server on FRAUD_GRPC_PORT, default 8001, or --grpc-target host:port)
    .venv/bin/locust -f loadtests/locustfile.py --config loadtests/headless.conf --host http://127.0.0.1:3000 GrpcUser

Payloads are seeded transactions (``--payload-seed``): ``--single-row-share`` of the requests carry one
transaction, the rest carry ``--multi-rows`` (e.g. "8,32"). Users wait 0 s between requests, so
``--users`` is the concurrency. SLOs: ``--slo-max-error-rate`` (default 0.1 %) and ``--slo-p99-ms``
(default ``P99_BUDGET_MS`` of loadtests/slo.py, 50 ms) over all requests; missing either makes locust
exit 1. Every option also reads a LOCUST_* environment variable (``locust --help``, group "fraud bundle").
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gevent
from locust import FastHttpUser, constant, events, task
from locust.env import Environment
from locust.runners import WorkerRunner

from loadtests import options
from loadtests.grpc_user import GrpcUser
from loadtests.options import UserSetup
from loadtests.payloads import rest_body
from loadtests.slo import evaluate

__all__ = ["GrpcUser", "RestUser"]
log = logging.getLogger("loadtests")


class RestUser(FastHttpUser):
    """POST /predict with seeded single- and multi-row bodies; a reply without one prediction per row fails."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.setup = UserSetup.from_environment(self.environment)

    @task
    def predict(self) -> None:
        rows = self.setup.draw()
        with self.client.post(
            "/predict", json=rest_body(rows), name=f"/predict [{len(rows)}]", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
            elif len(response.json().get("predictions", ())) != len(rows):
                response.failure(f"expected {len(rows)} predictions")


# Importing this file (pandas, the payload pool) blocks gevent's loop for seconds, and libev's cached clock would
# then fire `--run-time` that much early: refresh it once the imports are done.
gevent.get_hub().loop.update_now()


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    options.add_arguments(parser)


@events.init.add_listener
def _make_report_dirs(environment: Environment, **_: Any) -> None:
    parsed = environment.parsed_options
    for path in (getattr(parsed, "csv_prefix", None), getattr(parsed, "html_file", None)):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)


@events.quitting.add_listener
def _enforce_slo(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return
    exceptions = len(environment.runner.exceptions) if environment.runner else 0
    verdict = evaluate(
        environment.stats.total, options.budget_from(environment.parsed_options), user_exceptions=exceptions
    )
    (log.info if verdict.ok else log.error)(verdict.summary())
    # Set either way: locust's own rule (exit 1 on any failure) ignores the error budget.
    environment.process_exit_code = 0 if verdict.ok else 1
