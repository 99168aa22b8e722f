"""Traffic policies between model versions, and the router that applies one per request.

- ``single``: ``stable`` serves everything.
- ``canary``: variant ``canary`` (the candidate) with probability ``percent``/100, else ``stable``.
- ``ab``: variant ``b`` (the candidate) when hash(salt, routing_key) falls below ``percent``, else ``a``
  (stable): a customer keeps their variant. Without a key: ``a_unkeyed`` (stable), said in the response.
- ``shadow``: ``stable`` serves; the candidate scores the same rows in the background (``shadow_percent``
  of requests), compared and logged, never returned.
- ``blue_green``: the ``active`` colour serves; switching (and rolling back) is one policy change.

Versions are written as concrete versions or registry aliases (``stable``, ``canary``,
``latest``); they are resolved when the policy is applied (at start, on change, on reload).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PolicyKind = Literal["single", "canary", "ab", "shadow", "blue_green"]
# What a BentoML tag accepts as a version (aliases such as ``stable`` fit too): anything else can name no model.
VersionRef = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$")]


class Policy(BaseModel):
    """A traffic policy, as set through ``POST /admin/policy`` or FRAUD_POLICY_FILE."""

    # strict: "50" is not a percentage; the OpenAPI document promises numbers, and so does a policy file's YAML.
    model_config = ConfigDict(extra="forbid", strict=True)

    kind: PolicyKind = Field("single", description="How requests are split between versions.")
    stable: VersionRef = Field("stable", description="Version (or alias) serving by default.")
    candidate: VersionRef | None = Field(None, description="canary / ab (b side) / shadow version.")
    percent: float = Field(0.0, ge=0.0, le=100.0, description="canary / ab: share of traffic on the candidate.")
    salt: str = Field("ab", max_length=128, description="ab: changes which keys land in b (a new experiment).")
    shadow_percent: float = Field(100.0, ge=0.0, le=100.0, description="shadow: share of requests mirrored.")
    blue: VersionRef | None = Field(None, description="blue_green: the blue version.")
    green: VersionRef | None = Field(None, description="blue_green: the green version.")
    active: Literal["blue", "green"] = Field("blue", description="blue_green: the colour that serves.")

    @model_validator(mode="after")
    def _complete(self) -> Policy:
        if self.kind in ("canary", "ab", "shadow") and self.candidate is None:
            raise ValueError(f"a {self.kind} policy needs `candidate`")
        if self.kind == "blue_green" and (self.blue is None or self.green is None):
            raise ValueError("a blue_green policy needs `blue` and `green`")
        return self

    def references(self) -> dict[str, str]:
        """Variant -> version reference (alias or version) of every variant this policy uses."""
        if self.kind == "blue_green":
            assert self.blue is not None and self.green is not None
            return {"blue": self.blue, "green": self.green}
        refs = {"stable": self.stable}
        if self.candidate is not None and self.kind != "single":
            refs["candidate"] = self.candidate
        return refs


@dataclass(frozen=True)
class Route:
    """Where one request goes: the served variant and version, and an optional shadow."""

    variant: str
    version: str
    shadow_version: str | None = None
    note: str | None = None


NO_KEY_NOTE = "ab policy without routing_key: served the stable version (a)"


class Router:
    """Applies a policy whose references are already resolved to concrete versions."""

    def __init__(self, policy: Policy, versions: dict[str, str], *, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.versions = versions
        self._rng = rng or random.Random()

    def route(self, routing_key: str | None = None) -> Route:
        p, v = self.policy, self.versions
        if p.kind == "blue_green":
            return Route(p.active, v[p.active])
        if p.kind == "canary":
            if self._rng.random() * 100.0 < p.percent:
                return Route("canary", v["candidate"])
            return Route("stable", v["stable"])
        if p.kind == "ab":
            if routing_key is None:
                return Route("a_unkeyed", v["stable"], note=NO_KEY_NOTE)
            return Route("b", v["candidate"]) if ab_bucket(p.salt, routing_key) < p.percent else Route("a", v["stable"])
        if p.kind == "shadow" and self._rng.random() * 100.0 < p.shadow_percent:
            return Route("stable", v["stable"], shadow_version=v["candidate"])
        return Route("stable", v["stable"])

    @property
    def primary_version(self) -> str:
        """The version that serves when no split applies: stable, or the active colour."""
        return self.versions[self.policy.active if self.policy.kind == "blue_green" else "stable"]


def ab_bucket(salt: str, routing_key: str) -> float:
    """A stable position in [0, 100) for a key: the same in every worker, process and restart."""
    digest = hashlib.sha256(f"{salt}\x00{routing_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100.0
