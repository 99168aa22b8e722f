"""Calls the runner services from the entry service, mapping their failures onto our errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
import numpy as np
from bentoml.exceptions import BentoMLException

from fraudserve.errors import Unavailable
from fraudserve.rollout.versions import with_version_column

log = logging.getLogger(__name__)


class RunnerScorer:
    """A ``MemberScorer`` over BentoML dependency proxies (``bentoml.depends``).

    ``version`` is the one the runners were started with; a call may name another version,
    which the runners load on first use (see runners/factory.py).
    """

    def __init__(
        self,
        runners: Mapping[str, Any],
        *,
        version: str,
        call_timeout_s: float | None = None,
        bulk_call_timeout_s: float | None = None,
    ) -> None:
        self.runners = dict(runners)
        self.version = version
        self.call_timeout_s = call_timeout_s
        self.bulk_call_timeout_s = bulk_call_timeout_s

    async def __call__(
        self, member: str, features: np.ndarray, *, bulk: bool, version: str | None = None
    ) -> np.ndarray:
        scores = await self.call_coded(member, with_version_column(features, version or self.version), bulk=bulk)
        if np.isnan(scores).any():
            # The runner marks the rows of a version it cannot load or score (see runners/factory.py).
            raise Unavailable(f"model runner {member!r} cannot score version {version or self.version}")
        return scores

    async def call_coded(self, member: str, coded: np.ndarray, *, bulk: bool = False) -> np.ndarray:
        """One runner call on rows that already carry their version code; NaN marks a row whose version failed."""
        runner = self.runners[member]
        call = runner.to_async.score_bulk if bulk else runner.to_async.score
        try:
            # A runner that died is respawned behind a socket that still accepts connections:
            # without our own deadline its callers would wait for BentoML's request timeout.
            async with asyncio.timeout(self.bulk_call_timeout_s if bulk else self.call_timeout_s):
                return np.asarray(await call(coded), dtype=np.float64).reshape(-1)
        except BentoMLException as exc:
            # Shed by the batcher's deadline (503) or the runner failed: retryable for the caller.
            log.warning("runner %s failed: %s", member, exc)
            raise Unavailable(f"model runner {member!r} is unavailable; retry later") from exc
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            log.warning("runner %s unreachable: %r", member, exc)
            raise Unavailable(f"model runner {member!r} is unreachable; retry later") from exc
