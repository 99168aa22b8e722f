"""Calls the runner services from the entry service, mapping their failures onto our errors."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
import numpy as np
from bentoml.exceptions import BentoMLException

from fraudserve.errors import Unavailable

log = logging.getLogger(__name__)


class RunnerScorer:
    """A ``MemberScorer`` over BentoML dependency proxies (``bentoml.depends``)."""

    def __init__(self, runners: Mapping[str, Any]) -> None:
        self.runners = dict(runners)

    async def __call__(self, member: str, features: np.ndarray, *, bulk: bool) -> np.ndarray:
        runner = self.runners[member]
        call = runner.to_async.score_bulk if bulk else runner.to_async.score
        try:
            return np.asarray(await call(features))
        except BentoMLException as exc:
            # Shed by the batcher's deadline (503) or the runner failed: retryable for the caller.
            log.warning("runner %s failed: %s", member, exc)
            raise Unavailable(f"model runner {member!r} is unavailable; retry later") from exc
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            log.warning("runner %s unreachable: %r", member, exc)
            raise Unavailable(f"model runner {member!r} is unreachable; retry later") from exc
