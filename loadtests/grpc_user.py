"""A Locust user speaking the Open Inference Protocol over gRPC (tritonclient), reporting to locust's stats."""

from __future__ import annotations

import time
from functools import cache
from typing import Any

import grpc.experimental.gevent as grpc_gevent
import tritonclient.grpc as grpcclient
from locust import User, constant, task

from loadtests.options import UserSetup
from loadtests.payloads import OIP_DATATYPES, oip_columns
from models.transactions import TRANSACTION_SCHEMA

MODEL = "fraud_ensemble"
OUTPUT = "fraud_probability"
_DATATYPE = {f.name: OIP_DATATYPES[f.kind] for f in TRANSACTION_SCHEMA.features}


@cache
def _cooperative_grpc() -> None:
    """gRPC's C core blocks gevent unless its gevent integration is on; needed before the first channel only,
    and only when a gRPC user runs (it disturbed locust's end-of-run CSV writing in REST-only runs)."""
    grpc_gevent.init_gevent()


class GrpcUser(User):
    """ModelInfer on ``fraud_ensemble``: one input tensor per schema feature, output ``fraud_probability``."""

    wait_time = constant(0)

    def on_start(self) -> None:
        _cooperative_grpc()
        self.setup = UserSetup.from_environment(self.environment)
        self.client = grpcclient.InferenceServerClient(self.setup.grpc_target)

    def on_stop(self) -> None:
        self.client.close()

    @task
    def infer(self) -> None:
        rows = self.setup.draw()
        inputs = []
        for name, column in oip_columns(rows).items():
            tensor = grpcclient.InferInput(name, [len(rows)], _DATATYPE[name])
            tensor.set_data_from_numpy(column)
            inputs.append(tensor)
        outputs = [grpcclient.InferRequestedOutput(OUTPUT)]
        started = time.perf_counter()
        exception: Exception | None = None
        length = 0
        try:
            result = self.client.infer(MODEL, inputs, outputs=outputs, client_timeout=self.setup.timeout_s)
            probabilities = result.as_numpy(OUTPUT)
            if probabilities is None or len(probabilities) != len(rows):
                raise ValueError(f"{OUTPUT}: expected {len(rows)} values, got {probabilities!r}")
            response: Any = result.get_response()
            length = response.ByteSize()
        except Exception as exc:  # noqa: BLE001 - every failure is a failed request in locust's stats
            exception = exc
        self.environment.events.request.fire(
            request_type="grpc",
            name=f"ModelInfer [{len(rows)}]",
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=length,
            exception=exception,
            context={},
        )
