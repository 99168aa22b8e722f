"""The rollout state of one API worker: policy -> router, the versions' ensembles, cache, shadow tasks.

``InferenceCore`` asks it where a request goes (``route``), which ensemble a version is
(``spec``), and hands it the shadow comparisons to run in the background (``spawn_shadow``).
Every change of policy or of what an alias points at clears the response cache.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np
from bentoml.exceptions import BentoMLException

from fraudserve.ensemble import EnsembleSpec
from fraudserve.errors import Conflict, FraudServeError, ModelStoreError, NotFound
from fraudserve.metrics import labelled
from fraudserve.rollout.cache import ResponseCache, build_cache
from fraudserve.rollout.metrics import (
    POLICY_CHANGES,
    SHADOW_ABS_DIFF,
    SHADOW_COMPARISONS,
    SHADOW_SKIPPED,
    VARIANT_LATENCY,
    VARIANT_REQUESTS,
    VARIANT_SCORE,
)
from fraudserve.rollout.policy import Policy, Route, Router
from fraudserve.rollout.state import (
    PolicyConflict,
    PolicyDoc,
    SharedPolicyFile,
    default_state_path,
    load_policy_file,
)
from fraudserve.settings import Settings
from models import store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Change:
    """A policy resolved and checked but not applied: ``Rollout.apply`` swaps it in unless the shared doc moved on."""

    router: Router
    base: PolicyDoc | None  # the shared document this change replaces
    reason: str

    @property
    def policy(self) -> Policy:
        return self.router.policy

    @property
    def versions(self) -> dict[str, str]:
        return self.router.versions


class Rollout:
    def __init__(
        self,
        spec: EnsembleSpec,
        *,
        policy: Policy | None = None,
        shared: SharedPolicyFile | None = None,
        cache: ResponseCache | None = None,
        shadow_timeout_s: float = 2.0,
        shadow_max_inflight: int = 64,
    ) -> None:
        self.base = spec
        self.prefix = spec.prefix
        self.shared = shared
        self.cache = cache
        self.shadow_timeout_s = shadow_timeout_s
        self.shadow_max_inflight = shadow_max_inflight
        self.specs: dict[str, EnsembleSpec] = {spec.version: spec}
        self.revision = 0
        self.previous: Policy | None = None
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self.shadow_rows: Counter[str] = Counter()  # this worker's outcomes; /metrics has all workers'
        self.router = self._router(policy or Policy(kind="single", stable=spec.version))

    @classmethod
    def from_settings(cls, spec: EnsembleSpec, settings: Settings) -> Rollout:
        """The start-up policy (see fraudserve/rollout/state.py for the order), shared with the other workers."""
        shared = SharedPolicyFile(
            settings.policy_state_file or default_state_path(spec.prefix), settings.policy_refresh_s
        )
        cache = build_cache(settings)
        rollout = cls(
            spec,
            shared=shared,
            cache=cache,
            shadow_timeout_s=settings.shadow_timeout_s,
            shadow_max_inflight=settings.shadow_max_inflight,
            policy=Policy(kind="single", stable=settings.model_version),
        )
        doc = shared.read()
        config = load_policy_file(settings.policy_file) if settings.policy_file else None
        if config is not None and (doc is None or doc.config_sha256 != config[1]):
            policy, sha = config
            router = rollout._router(policy)
            previous = doc.current if doc else None
            revision = (doc.revision if doc else 0) + 1
            try:
                shared.commit(
                    PolicyDoc(policy, previous, revision, sha, reason="config file"),
                    expected_revision=doc.revision if doc else None,
                )
            except PolicyConflict as exc:  # a sibling worker starting at the same time wrote first
                if exc.current is not None:
                    rollout._adopt(exc.current)
            else:
                rollout._swap(router)
                rollout.revision, rollout.previous = revision, previous
                log.info("rollout: policy from %s applied: %s", settings.policy_file, rollout.router.versions)
        elif doc is not None:
            rollout._adopt(doc)
        POLICY_CHANGES.labels(kind="start").inc()
        return rollout

    # --- per request -------------------------------------------------------------------------

    def refresh(self) -> None:
        """Adopt another worker's change of the shared policy (cheap: a stat every refresh_s)."""
        if self.shared is None:
            return
        doc = self.shared.changed()
        if doc is not None and doc.revision != self.revision:
            try:
                self._adopt(doc)
                POLICY_CHANGES.labels(kind="shared").inc()
            except FraudServeError as exc:
                log.error("rollout: shared policy revision %d not applied, keeping ours: %s", doc.revision, exc)

    def route(self, routing_key: str | None) -> Route:
        return self.router.route(routing_key)

    def spec(self, version: str) -> EnsembleSpec:
        found = self.specs.get(version)
        if found is None:
            found = store.load_ensemble(self.prefix, version)
            # Keyed by the concrete version: an alias ("stable") moves, so it is resolved on every use.
            self.specs[found.version] = found
        return found

    @property
    def primary(self) -> EnsembleSpec:
        return self.spec(self.router.primary_version)

    def observe(self, route: Route, probabilities: np.ndarray, latency_s: float) -> None:
        labelled(VARIANT_REQUESTS, route.variant, route.version).inc()
        labelled(VARIANT_LATENCY, route.variant).observe(latency_s)
        histogram = labelled(VARIANT_SCORE, route.variant)
        for p in probabilities.tolist():
            histogram.observe(p)

    # --- shadow ------------------------------------------------------------------------------

    def spawn_shadow(
        self,
        work: Coroutine[Any, Any, tuple[np.ndarray, np.ndarray]],
        route: Route,
        probabilities: np.ndarray,
        decisions: np.ndarray,
    ) -> None:
        """Run the shadow scoring in the background; the caller never awaits it, its failure is only counted."""
        if len(self._shadow_tasks) >= self.shadow_max_inflight:
            work.close()
            SHADOW_SKIPPED.inc()
            self.shadow_rows["skipped_requests"] += 1
            return
        task = asyncio.create_task(self._compare(work, route, probabilities, decisions))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _compare(
        self,
        work: Coroutine[Any, Any, tuple[np.ndarray, np.ndarray]],
        route: Route,
        served_probabilities: np.ndarray,
        served_decisions: np.ndarray,
    ) -> None:
        rows = len(served_probabilities)
        try:
            async with asyncio.timeout(self.shadow_timeout_s):
                probabilities, decisions = await work
        except TimeoutError:
            SHADOW_COMPARISONS.labels(outcome="timeout").inc(rows)
            self.shadow_rows["timeout"] += rows
            log.warning("shadow %s timed out after %.3fs (%d rows)", route.shadow_version, self.shadow_timeout_s, rows)
            return
        except Exception as exc:  # noqa: BLE001 - a shadow failure must never reach the caller
            SHADOW_COMPARISONS.labels(outcome="error").inc(rows)
            self.shadow_rows["error"] += rows
            log.warning("shadow %s failed (%d rows): %r", route.shadow_version, rows, exc)
            return
        agree = int((decisions == served_decisions).sum())
        self.shadow_rows["agree"] += agree
        self.shadow_rows["disagree"] += rows - agree
        if agree:
            SHADOW_COMPARISONS.labels(outcome="agree").inc(agree)
        if agree < rows:
            SHADOW_COMPARISONS.labels(outcome="disagree").inc(rows - agree)
        diffs = np.abs(probabilities - served_probabilities)
        for d in diffs.tolist():
            SHADOW_ABS_DIFF.observe(d)
        scores = VARIANT_SCORE.labels(variant="shadow")
        for p in probabilities.tolist():
            scores.observe(p)
        log.info(
            "shadow %s vs served %s: %d/%d decisions agree, max |dp| %.4f",
            route.shadow_version,
            route.version,
            agree,
            rows,
            float(diffs.max()),
        )

    async def drain_shadows(self) -> None:
        """Wait for the running shadow comparisons (tests, shutdown)."""
        if self._shadow_tasks:
            await asyncio.gather(*self._shadow_tasks, return_exceptions=True)

    # --- changes -----------------------------------------------------------------------------

    def plan(self, policy: Policy, *, reason: str = "admin") -> Change:
        """Resolve and check ``policy`` against the shared document it will replace; nothing changes yet."""
        return Change(self._router(policy), self._latest(), reason)

    def plan_rollback(self) -> Change:
        """Back to the previous policy (and a second rollback goes forward again)."""
        doc = self._latest()
        previous = doc.previous if doc else self.previous
        if previous is None:
            raise Conflict("there is no previous policy to roll back to", field="policy")
        return Change(self._router(previous), doc, "rollback")

    def plan_reload(self) -> Change:
        """The current policy with its aliases resolved again (after `python -m models.registry promote`)."""
        doc = self._latest()
        return Change(self._router(doc.current if doc else self.router.policy), doc, "reload")

    def apply(self, change: Change) -> dict[str, Any]:
        """Swap the planned router in, if the shared document is still the one it was planned on.

        Raises ``PolicyConflict`` (409) otherwise, after adopting the document that won.
        """
        base = change.base
        current = base.current if base is not None else self.router.policy
        revision = max(self.revision, base.revision if base else 0) + 1
        doc = PolicyDoc(change.policy, current, revision, base.config_sha256 if base else None, reason=change.reason)
        if self.shared is not None:
            try:
                self.shared.commit(doc, expected_revision=base.revision if base else None)
            except PolicyConflict as exc:
                if exc.current is not None and exc.current.revision != self.revision:
                    try:
                        self._adopt(exc.current)
                    except FraudServeError as error:
                        log.error("rollout: revision %d not applied, keeping ours: %s", exc.current.revision, error)
                raise
        self._swap(change.router)
        self.previous = current
        self.revision = revision
        POLICY_CHANGES.labels(kind=change.reason).inc()
        return self.describe()

    def set_policy(self, policy: Policy, *, reason: str = "admin") -> dict[str, Any]:
        """Plan and apply at once, without a warm-up (the admin API warms up in between: admin.py)."""
        return self.apply(self.plan(policy, reason=reason))

    def rollback(self) -> dict[str, Any]:
        return self.apply(self.plan_rollback())

    def reload(self) -> dict[str, Any]:
        """Resolve the aliases again, in every worker."""
        return self.apply(self.plan_reload())

    def describe(self) -> dict[str, Any]:
        return {
            "policy": self.router.policy.model_dump(),
            "versions": dict(self.router.versions),
            "previous": self.previous.model_dump() if self.previous else None,
            "revision": self.revision,
            "worker_pid": os.getpid(),
            "cache": self.cache.stats() if self.cache is not None else None,
            "shadow": {"inflight": len(self._shadow_tasks), **self.shadow_rows},
        }

    def _latest(self) -> PolicyDoc | None:
        return self.shared.read() if self.shared is not None else None

    def _adopt(self, doc: PolicyDoc) -> None:
        self._swap(self._router(doc.current))
        self.previous = doc.previous
        self.revision = doc.revision

    def _swap(self, router: Router) -> None:
        if self.cache is not None:
            self.cache.clear()
        self.router = router
        log.info("rollout: policy %s -> versions %s", router.policy.kind, router.versions)

    def _router(self, policy: Policy) -> Router:
        """Resolve every reference, load and check every ensemble: all or nothing."""
        versions: dict[str, str] = {}
        for variant, ref in policy.references().items():
            try:
                versions[variant] = ref if ref in self.specs else store.resolve_version(self.prefix, ref)
                spec = self.spec(versions[variant])
            except ModelStoreError as exc:
                # A well-formed policy that the model store cannot serve (now): 409, like a version that cannot score.
                raise Conflict(f"{variant}: {exc.message}", field=f"policy.{variant}") from exc
            if not self._compatible(spec):
                raise Conflict(f"{variant}: {self._incompatible(spec)}", field=f"policy.{variant}")
        return Router(policy, versions)

    def pinned(self, version: str) -> EnsembleSpec:
        """The ensemble of a version a request names explicitly; NotFound when it cannot serve here."""
        try:
            spec = self.spec(version)
        except ModelStoreError as exc:
            raise NotFound(f"no version {version!r} can be loaded: {exc.message}", field="model_version") from exc
        except BentoMLException:  # not even a valid tag
            raise NotFound(f"no version {version!r}: not a valid version name", field="model_version") from None
        if not self._compatible(spec):
            raise NotFound(self._incompatible(spec), field="model_version")
        return spec

    def _compatible(self, spec: EnsembleSpec) -> bool:
        return spec.schema == self.base.schema and spec.members == self.base.members

    def _incompatible(self, spec: EnsembleSpec) -> str:
        return (
            f"version {spec.version} has another feature schema or members than the served"
            f" {self.base.version}; it cannot share this service's traffic"
        )
