"""The entry service: composes the model runners and exposes the inference core.

    bentoml serve service:FraudDetection       # REST on :3000 (see README.md)

It only wires: the REST routes (``fraudserve.rest_api``: a Starlette app, see there why), the Open
Inference Protocol (``fraudserve.oip``), readiness and liveness all call one ``InferenceCore``.
"""

from __future__ import annotations

import functools
import logging

import bentoml

from fraudserve import readiness, rest_api, runtime, service_options
from fraudserve.batcher import RowBatcher
from fraudserve.image import IMAGE
from fraudserve.inference import InferenceCore
from fraudserve.members import InProcessMembers
from fraudserve.oip import serving as oip
from fraudserve.remote import RunnerScorer
from fraudserve.rollout.engine import Rollout
from fraudserve.security import get_guards
from fraudserve.security import middleware as security_middleware
from fraudserve.settings import get_settings
from models import store
from runners.hgb import HgbRunner
from runners.iforest import IforestRunner
from runners.logreg import LogregRunner

log = logging.getLogger(__name__)
settings = get_settings()
service_options.prepare_process(settings)  # accept threads, BentoML's timer fix (fraudserve/service_options.py)
SPEC = store.load_ensemble(settings.model_prefix, settings.model_version)


@bentoml.service(
    name="fraud_detection",
    workers=settings.api_workers,
    traffic={"timeout": settings.runner_timeout_s},
    **service_options.common_options(settings),  # tracing, access log
    image=IMAGE,  # the OCI image: fraudserve/image.py, scripts/image.sh
)
# Mounts are matched in the order they are added (bottom decorator first): the REST routes, /predict the hot
# one, before the OIP routes.
@bentoml.asgi_app(oip.rest_app)  # serves /v2/... (see fraudserve/oip/rest.py)
@bentoml.asgi_app(rest_api.app)  # /predict, /model, /admin/*, /docs.json (see fraudserve/rest_api.py)
class FraudDetection:
    ensemble_ref = bentoml.models.BentoModel(SPEC.tag("ensemble"))
    hgb = bentoml.depends(HgbRunner)
    logreg = bentoml.depends(LogregRunner)
    iforest = bentoml.depends(IforestRunner)

    def __init__(self) -> None:
        scorer = RunnerScorer(
            {"hgb": self.hgb, "logreg": self.logreg, "iforest": self.iforest},
            version=SPEC.version,
            call_timeout_s=settings.runner_call_timeout_s,
            bulk_call_timeout_s=settings.runner_timeout_s,
        )
        batcher = None
        if settings.entry_batching_enabled:
            batch_call = scorer.call_coded
            if settings.member_placement == "inprocess":
                members = InProcessMembers.load(
                    SPEC, preferred=settings.member_runtime, threads=settings.runner_threads
                )
                batch_call = members.call_coded
            batcher = RowBatcher(
                batch_call,
                max_batch_rows=settings.entry_max_batch_rows,
                max_queued_rows=settings.entry_max_queued_rows,
                max_inflight_batches=settings.entry_max_inflight_batches,
                # A batch scored in this worker cannot stall apart from the worker itself: no timer per request.
                deadline_s=settings.runner_call_timeout_s if settings.member_placement == "runners" else None,
            )
        self.core = InferenceCore(
            SPEC,
            scorer,
            max_rows=settings.max_rows_per_request,
            bulk_rows_threshold=settings.bulk_rows_threshold,
            threshold=settings.decision_threshold,
            rollout=Rollout.from_settings(SPEC, settings),
            batcher=batcher,
            runtimes=functools.partial(runtime.describe_version, SPEC.prefix, preferred=settings.member_runtime),
            separate_bulk_path=batcher is not None and settings.member_placement == "inprocess",
        )
        rest_api.attach(
            self.core,
            max_key_chars=settings.routing_key_max_chars,
            predict_auth=bool(settings.api_keys.get_secret_value()),
            base_openapi=lambda: FraudDetection.openapi_spec.asdict(),
        )

    @bentoml.on_startup
    async def start_oip(self) -> None:
        """Open Inference Protocol on this worker's core: REST under /v2, gRPC on FRAUD_GRPC_PORT."""
        self.oip = await oip.start(self.core, settings)
        service_options.freeze_heap()  # start-up is over: no gen-2 pauses over what it loaded

    @bentoml.on_shutdown
    async def stop_oip(self) -> None:
        await self.oip.stop()

    async def __is_alive__(self) -> bool:
        """Alive unless the runners have been unready for FRAUD_LIVENESS_GRACE_S (see fraudserve/readiness.py)."""
        probe = readiness.probe_for(self.core, timeout_s=settings.ready_probe_timeout_s, cache_s=settings.ready_cache_s)
        return await probe.alive(settings.liveness_grace_s)

    async def __is_ready__(self) -> bool:
        """Ready only when every runner answers a real scoring call in time (one probe per worker, shared briefly)."""
        probe = readiness.probe_for(self.core, timeout_s=settings.ready_probe_timeout_s, cache_s=settings.ready_cache_s)
        return await probe.ready()


# API keys, rate limit, in-flight cap, body size, deadline: wraps every route, the /v2 mount included.
for _middleware, _options in security_middleware(settings, get_guards()):
    FraudDetection.add_asgi_middleware(_middleware, **_options)
