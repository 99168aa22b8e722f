"""The framework ceiling of benchmarks/online.py: a BentoML endpoint that parses the body and returns a constant.

    BENCH_TRIVIAL_WORKERS=1 .venv/bin/bentoml serve benchmarks.trivial_service:Trivial --port 3100

Same route and body as the bundle's ``POST /predict`` (``{"transactions": {...}}``), same kind of
``@bentoml.api`` method, no model and no runner: what is left is BentoML's own cost per request. It runs
with the bundle's BentoML options (access log, tracing, the request-timeout fix, the accept thread, the frozen
start-up heap),
so the ratio compares like with like. The bundle's ``/predict`` is a mounted Starlette app, which skips
``@bentoml.api``'s input models, so it can exceed this "ceiling".
``BENCH_TRIVIAL_WORKERS`` (read at import, as the bundle reads FRAUD_API_WORKERS) sets the worker
count; online.py passes the bundle's.
"""

from __future__ import annotations

import os
from typing import Any

import bentoml

from fraudserve import service_options
from fraudserve.settings import get_settings

settings = get_settings()
service_options.prepare_process(settings)
_ANSWER = {"predictions": [{"fraud_probability": 0.0, "is_fraud": False}]}


@bentoml.service(
    name="trivial_ceiling",
    workers=int(os.environ.get("BENCH_TRIVIAL_WORKERS", "1")),
    **service_options.common_options(settings),
)
class Trivial:
    @bentoml.on_startup
    def settle_heap(self) -> None:
        service_options.freeze_heap()  # as the bundle's workers do

    @bentoml.api(route="/predict")
    async def predict(self, transactions: dict[str, Any]) -> dict[str, Any]:
        return _ANSWER
