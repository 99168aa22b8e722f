"""What every BentoML service of this repository shares: the process set-up and the service options.

The entry service (service.py), the runners (runners/factory.py) and the benchmarks' trivial ceiling
(benchmarks/trivial_service.py) call these, so the ceiling always runs with the bundle's options.
"""

from __future__ import annotations

import gc
import os
from typing import Any

from fraudserve import accept, bentoml_fixes, tracing
from fraudserve.settings import Settings


def prepare_process(settings: Settings) -> None:
    """Before any server starts in this process (idempotent)."""
    # The API workers share one listening socket, and libuv (uvloop) accepts every pending connection on a wake-up:
    # a client that opens its connections at once (a load balancer, wrk) could land them all on one worker (seen: 76 %
    # of a core vs 1 %). One accept per wake-up made that rarer; with FRAUD_ACCEPT_BALANCING, the default, each worker
    # accepts on a blocking thread instead (fraudserve/accept.py).
    os.environ.setdefault("UV_TCP_SINGLE_ACCEPT", "1")
    bentoml_fixes.apply()  # BentoML's request timeout holds every request for 60 s (see there)
    if settings.accept_balancing:
        accept.install()


def freeze_heap() -> None:
    """At the end of a worker's start-up: what it has loaded (BentoML, the models) leaves the collector's reach.

    Every gen-2 collection walked all of it: pauses of 100-130 ms every few seconds under single-row load, in
    1 % of requests, so the p99 (OIP REST at 8 connections: 94 ms, 7.8 ms frozen; measured with gc.callbacks).
    """
    gc.collect()
    gc.freeze()


def common_options(settings: Settings) -> dict[str, Any]:
    """``@bentoml.service`` options of every service: tracing and the access log."""
    return {
        "tracing": tracing.service_config(settings),
        "logging": {"access": {"enabled": settings.access_log_enabled}},
    }
