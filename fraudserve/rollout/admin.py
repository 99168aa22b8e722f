"""The admin API of staged rollouts: what the thin ``/admin/*`` routes of service.py call.

    POST /admin/policy/get   the current policy, resolved versions, previous policy, cache stats
    POST /admin/policy       body = a Policy: switch traffic now (all workers within FRAUD_POLICY_REFRESH_S)
    POST /admin/rollback     back to the previous policy (a second call goes forward again)
    POST /admin/reload       resolve the registry aliases again (after `python -m models.registry promote`)

The three changes warm every version up first and answer 409 (``Conflict``) instead of
switching when a member cannot score, or when another worker changed the policy meanwhile.

Every route needs an admin key (``Authorization: Bearer <FRAUD_ADMIN_API_KEYS key>``); without
admin keys the routes answer 403 unless FRAUD_DEV_MODE is on. ``require_admin`` is the one
check, and it reuses the hardening key store (fraudserve/security), which also guards /admin/*
in its middleware; it stays here so the routes are safe even where that middleware is not mounted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import bentoml

from fraudserve.ensemble import EnsembleSpec
from fraudserve.errors import Conflict, FraudServeError
from fraudserve.inference import InferenceCore
from fraudserve.rollout.engine import Change
from fraudserve.rollout.policy import Policy
from fraudserve.security import get_guards
from fraudserve.security.auth import Access
from models import store


def require_admin(authorization: str | None) -> None:
    """Raises Unauthorized (401) or Forbidden (403) unless the caller may use the admin API."""
    get_guards().keys.authorize(Access.ADMIN, authorization)


async def get_policy(core: InferenceCore) -> dict[str, Any]:
    core.rollout.refresh()
    return core.rollout.describe()


async def set_policy(core: InferenceCore, policy: Policy) -> dict[str, Any]:
    return await _change(core, core.rollout.plan(policy))


async def rollback(core: InferenceCore) -> dict[str, Any]:
    return await _change(core, core.rollout.plan_rollback())


async def reload(core: InferenceCore) -> dict[str, Any]:
    return await _change(core, core.rollout.plan_reload())


async def _change(core: InferenceCore, change: Change) -> dict[str, Any]:
    """Warm every version of the change up, then apply it; refused (409) while any member cannot score.

    Warming up before the switch means live traffic never meets a version the runners cannot
    load. A refused change leaves the current policy and its previous one as they were, so a
    rollback stays possible.
    """
    report = await core.warm_up(change.versions.values())
    failed = {v: r for v, r in report.items() if r != "ok"}
    if failed:
        variants = {v: "/".join(name for name, version in change.versions.items() if version == v) for v in failed}
        reasons = {}
        for version, reported in failed.items():
            diagnosis: str | None = await asyncio.to_thread(_diagnose, core.rollout.spec(version))
            reasons[version] = diagnosis or reported
        details = "; ".join(f"{variants[v]} version {v}: {r.removeprefix('error: ')}" for v, r in reasons.items())
        raise Conflict(f"policy not applied, a member cannot score: {details}", field="policy")
    return {**core.rollout.apply(change), "warm_up": report}


def _diagnose(spec: EnsembleSpec) -> str | None:
    """Why a member's artifact does not load, as this worker sees the model store (runners only say "failed")."""
    for member in spec.members:
        try:
            store.load_member(bentoml.models.get(spec.tag(member)))
        except bentoml.exceptions.NotFound:
            return f"{member}: {spec.tag(member)} is not in the model store"
        except FraudServeError as exc:
            return f"{member}: {exc.message}"
    return None
