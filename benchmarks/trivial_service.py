"""The framework ceiling of benchmarks/online.py: a BentoML endpoint that parses the body and returns a constant.

    BENCH_TRIVIAL_WORKERS=1 .venv/bin/bentoml serve benchmarks.trivial_service:Trivial --port 3100

Same route and body as the bundle's ``POST /predict`` (``{"transactions": {...}}``), same kind of
``@bentoml.api`` method, no model and no runner: what is left is BentoML's own cost per request.
``BENCH_TRIVIAL_WORKERS`` (read at import, as the bundle reads FRAUD_API_WORKERS) sets the worker
count; online.py passes the bundle's.
"""

from __future__ import annotations

import os
from typing import Any

import bentoml

_ANSWER = {"predictions": [{"fraud_probability": 0.0, "is_fraud": False}]}


@bentoml.service(name="trivial_ceiling", workers=int(os.environ.get("BENCH_TRIVIAL_WORKERS", "1")))
class Trivial:
    @bentoml.api(route="/predict")
    async def predict(self, transactions: dict[str, Any]) -> dict[str, Any]:
        return _ANSWER
