"""Readiness of one API worker: one shared probe of every runner, reused for a short time.

Every readiness endpoint (``/readyz``, ``/v2/health/ready``, the OIP ``ServerReady`` and
``ModelReady``, ``grpc.health.v1``, the repository index) is open and unlimited, and each
answer needs a real scoring call on the runners. So a worker keeps one probe result for
``cache_s`` seconds, and callers that arrive while a probe runs wait for that probe
(single flight): however many probes arrive, the runners see at most one round per ``cache_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence

import numpy as np

from fraudserve.inference import InferenceCore

log = logging.getLogger(__name__)

Scorer = Callable[[str], Awaitable[object]]
Listener = Callable[[Mapping[str, bool]], Awaitable[None]]


class ReadinessProbe:
    """``states()``: member -> answered a probe row within ``timeout_s``; shared for ``cache_s``."""

    def __init__(
        self,
        members: Sequence[str],
        score: Scorer,
        *,
        timeout_s: float,
        cache_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.members = tuple(members)
        self.score = score
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self._clock = clock
        self._states: dict[str, bool] | None = None
        self._at = 0.0
        self._inflight: asyncio.Task[dict[str, bool]] | None = None
        self._listeners: list[Listener] = []
        self._ready_at = clock()  # last time every member was ready (start-up counts: runners are loading)

    def on_result(self, listener: Listener) -> None:
        """Call ``listener`` with the states after every probe round (e.g. to update grpc.health.v1)."""
        self._listeners.append(listener)

    async def states(self) -> dict[str, bool]:
        if self._states is not None and self._clock() - self._at < self.cache_s:
            return self._states
        task = self._inflight
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = self._inflight = asyncio.get_running_loop().create_task(self._round())
        # A caller that goes away (client disconnect) must not cancel the round the others wait for.
        return dict(await asyncio.shield(task))

    async def ready(self, member: str | None = None) -> bool:
        """Every member ready (``member`` None: the ensemble), else that member."""
        states = await self.states()
        return all(states.values()) if member is None else states[member]

    async def alive(self, grace_s: float) -> bool:
        """False once the members have not all been ready for ``grace_s`` (0: always alive).

        BentoML does not always bring a dead runner back (inside a container it stays dead), and an API
        worker without its runners should then be restarted by the orchestrator's liveness probe rather
        than stay up answering 503s. Overload alone rarely lasts ``grace_s``: readiness recovers first.
        """
        if grace_s <= 0:
            return True
        await self.states()
        return self._clock() - self._ready_at < grace_s

    async def _round(self) -> dict[str, bool]:
        try:
            answers = await asyncio.gather(*(self._probe(m) for m in self.members))
            states = dict(zip(self.members, answers, strict=True))
            self._states, self._at = states, self._clock()
            if all(answers):
                self._ready_at = self._at
        finally:
            self._inflight = None
        for listener in self._listeners:
            try:
                await listener(states)
            except Exception:  # a listener's failure must not fail the probe
                log.exception("readiness listener failed")
        return states

    async def _probe(self, member: str) -> bool:
        return await answers_in_time(self.score(member), self.timeout_s, member)


async def answers_in_time(call: Awaitable[object], timeout_s: float, what: str) -> bool:
    """One readiness probe: ``call`` (a scoring call) answered within ``timeout_s``; any failure means not ready."""
    try:
        async with asyncio.timeout(timeout_s):
            await call
        return True
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        log.warning("readiness probe of %s failed: %r", what, exc)
        return False


_PROBES: weakref.WeakKeyDictionary[InferenceCore, ReadinessProbe] = weakref.WeakKeyDictionary()


def probe_for(core: InferenceCore, *, timeout_s: float, cache_s: float) -> ReadinessProbe:
    """The one probe of this worker's core (created on first use; later arguments are ignored)."""
    probe = _PROBES.get(core)
    if probe is None:
        row = np.asarray(core.schema.encode_records([core.schema.example_row()]))

        async def score(member: str) -> object:
            return await core.probe_member(member, row)

        probe = _PROBES[core] = ReadinessProbe(core.spec.members, score, timeout_s=timeout_s, cache_s=cache_s)
    return probe
