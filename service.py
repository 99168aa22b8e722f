"""The entry service: composes the model runners and exposes the inference core.

    bentoml serve service:FraudDetection       # REST on :3000 (see README.md)

It only wires: every route is a thin call into ``fraudserve.inference.InferenceCore``; ``POST /predict``
is served by ``fraudserve.rest_predict`` (a Starlette route, see there why), the Open Inference Protocol
by ``fraudserve.oip``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Coroutine
from typing import Any

import bentoml

from fraudserve import readiness, rest_predict, runtime, tracing
from fraudserve.batcher import RowBatcher
from fraudserve.http_errors import error_response
from fraudserve.image import IMAGE
from fraudserve.inference import InferenceCore
from fraudserve.oip import serving as oip
from fraudserve.remote import RunnerScorer
from fraudserve.rollout import admin
from fraudserve.rollout.engine import Rollout
from fraudserve.rollout.policy import Policy
from fraudserve.security import get_guards
from fraudserve.security import middleware as security_middleware
from fraudserve.settings import get_settings
from models import store
from runners.hgb import HgbRunner
from runners.iforest import IforestRunner
from runners.logreg import LogregRunner

log = logging.getLogger(__name__)
settings = get_settings()
SPEC = store.load_ensemble(settings.model_prefix, settings.model_version)


@bentoml.service(
    name="fraud_detection",
    workers=settings.api_workers,
    traffic={"timeout": settings.runner_timeout_s},
    tracing=tracing.service_config(settings),
    logging={"access": {"enabled": settings.access_log_enabled}},
    image=IMAGE,  # the OCI image: fraudserve/image.py, scripts/image.sh
)
# Mounts are matched in the order they are added (bottom decorator first): /predict, the hot route, first.
@bentoml.asgi_app(oip.rest_app)  # serves /v2/... (see fraudserve/oip/rest.py)
@bentoml.asgi_app(rest_predict.app)  # serves POST /predict and /docs.json (see fraudserve/rest_predict.py)
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
            batcher = RowBatcher(
                scorer.call_coded,
                max_batch_rows=settings.entry_max_batch_rows,
                max_queued_rows=settings.entry_max_queued_rows,
                max_inflight_batches=settings.entry_max_inflight_batches,
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
        )
        rest_predict.attach(
            self.core,
            max_key_chars=settings.routing_key_max_chars,
            base_openapi=lambda: FraudDetection.openapi_spec.asdict(),
        )

    @bentoml.api(route="/model")
    def model(self) -> dict[str, Any]:
        """Versions, training metrics, decision threshold and feature schema of the ensemble serving now.

        That is the traffic policy's primary version (stable, or the active colour); ``versions``
        maps every variant of the policy to its version.
        """
        spec = self.core.rollout.spec(self.core.primary_version())
        return {
            "version": spec.version,
            "model_versions": spec.tags(),
            "versions": dict(self.core.rollout.router.versions),
            "runtimes": self.core.runtimes(spec.version),
            "threshold": self.core.threshold_for(spec),
            "metrics": spec.metrics,
            "schema": spec.schema.model_dump(mode="json", exclude_none=True),
        }

    # Staged rollout admin API (fraudserve/rollout/admin.py); every route needs an admin key.
    @bentoml.api(route="/admin/policy/get")
    async def admin_policy_get(self, ctx: bentoml.Context) -> dict[str, Any]:
        """The traffic policy of this worker: policy, resolved versions, previous policy, cache stats."""
        return await _admin(ctx, admin.get_policy(self.core))

    @bentoml.api(route="/admin/policy")
    async def admin_policy_set(self, policy: Policy, /, ctx: bentoml.Context) -> dict[str, Any]:
        """Switch traffic now (body: a policy); every worker follows within FRAUD_POLICY_REFRESH_S."""
        return await _admin(ctx, admin.set_policy(self.core, policy))

    @bentoml.api(route="/admin/rollback")
    async def admin_rollback(self, ctx: bentoml.Context) -> dict[str, Any]:
        """Restore the previous traffic policy."""
        return await _admin(ctx, admin.rollback(self.core))

    @bentoml.api(route="/admin/reload")
    async def admin_reload(self, ctx: bentoml.Context) -> dict[str, Any]:
        """Resolve the registry aliases (stable, canary) again, in every worker."""
        return await _admin(ctx, admin.reload(self.core))

    @bentoml.on_startup
    async def start_oip(self) -> None:
        """Open Inference Protocol on this worker's core: REST under /v2, gRPC on FRAUD_GRPC_PORT."""
        self.oip = await oip.start(self.core, settings)

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


async def _admin(ctx: bentoml.Context, action: Coroutine[Any, Any, dict[str, Any]]) -> Any:
    """Run an admin action once the caller's admin key checks out; errors mapped once, as for /predict."""
    try:
        admin.require_admin(ctx.request.headers.get("authorization"))
        return await action
    except Exception as exc:  # noqa: BLE001 - the HTTP boundary maps every error once
        action.close()
        response = error_response(exc)
        # On a route that takes ctx, BentoML overwrites a returned response's status with ctx's (200).
        ctx.response.status_code = response.status_code
        return response


# API keys, rate limit, in-flight cap, body size, deadline: wraps every route, the /v2 mount included.
for _middleware, _options in security_middleware(settings, get_guards()):
    FraudDetection.add_asgi_middleware(_middleware, **_options)
