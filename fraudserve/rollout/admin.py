"""The admin API of staged rollouts: what the thin ``/admin/*`` routes of service.py call.

    POST /admin/policy/get   the current policy, resolved versions, previous policy, cache stats
    POST /admin/policy       body = a Policy: switch traffic now (all workers within FRAUD_POLICY_REFRESH_S)
    POST /admin/rollback     back to the previous policy (a second call goes forward again)
    POST /admin/reload       resolve the registry aliases again (after `python -m models.registry promote`)

Every route needs an admin key (``Authorization: Bearer <FRAUD_ADMIN_API_KEYS key>``); without
admin keys the routes answer 403 unless FRAUD_DEV_MODE is on. ``require_admin`` is the one
check, and it reuses the hardening key store (fraudserve/security), which also guards /admin/*
in its middleware; it stays here so the routes are safe even where that middleware is not mounted.
"""

from __future__ import annotations

from typing import Any

from fraudserve.inference import InferenceCore
from fraudserve.rollout.policy import Policy
from fraudserve.security import get_guards
from fraudserve.security.auth import Access


def require_admin(authorization: str | None) -> None:
    """Raises Unauthorized (401) or Forbidden (403) unless the caller may use the admin API."""
    get_guards().keys.authorize(Access.ADMIN, authorization)


async def get_policy(core: InferenceCore) -> dict[str, Any]:
    core.rollout.refresh()
    return core.rollout.describe()


async def set_policy(core: InferenceCore, policy: Policy) -> dict[str, Any]:
    state = core.rollout.set_policy(policy)
    return {**state, "warm_up": await core.warm_up()}


async def rollback(core: InferenceCore) -> dict[str, Any]:
    state = core.rollout.rollback()
    return {**state, "warm_up": await core.warm_up()}


async def reload(core: InferenceCore) -> dict[str, Any]:
    state = core.rollout.reload()
    return {**state, "warm_up": await core.warm_up()}
