"""The entry worker's adaptive batcher: one call per member runner for the rows of many concurrent requests.

Every transport (REST ``/predict``, OIP REST, OIP gRPC unary and stream messages) reaches the runners
through ``InferenceCore``, which hands a request's encoded rows to this batcher. Without it every
single-row request paid one HTTP hop per runner, and the runners' own batching only started after each
hop was parsed, so the hop dominated (about 3 ms of runner CPU per request).

Each member runner has its own lane, so a stalled runner holds up only its own member's rows (per-member
OIP inference and readiness of the other members go on). In each lane a request goes through: **queue**
(refused at once with ``Unavailable`` when the lane is full) -> **batch** (taken a few event-loop turns after a
dispatch slot frees, ``TAKE_AFTER_TURNS``: no wait window, so a lone request leaves at once, and under load the
rows that arrive while a batch is in flight, or are about to be submitted, form the next one, up to
``max_batch_rows``) -> **score** (one runner call for the
whole batch, rows of several versions mixed: each row carries its version code) -> **unbatch** (each
request gets its own slice; a request whose version could not be scored, NaN from the runner, fails alone).

A request's time in the batcher, queue and call together, is bounded by ``deadline_s``: a request queued
behind a batch to a dead runner fails with ``Unavailable`` at its own deadline, not after that batch's
timeout plus its own call's.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np
from opentelemetry.trace import SpanContext

from fraudserve import tracing
from fraudserve.errors import Unavailable
from fraudserve.metrics import ENTRY_BATCH_REQUESTS, ENTRY_BATCH_ROWS, ENTRY_QUEUE_REJECTED, labelled
from fraudserve.rollout.versions import version_code

log = logging.getLogger(__name__)
# Loop turns a batch task lets pass before it takes its rows. Scored in this worker, a batch returns without
# yielding, so rows taken at once would make ~1 request per batch under load; a gRPC call needs a few turns from
# arrival to its submit. Measured on 2 cores, OIP gRPC at 64 connections: 1 turn 1.6 rows per batch, 2 turns 2.1,
# 4 turns 2.9 (+15-20 % req/s over 1). Idle, a turn costs microseconds: there is no wait window.
TAKE_AFTER_TURNS = 4

# (member, rows as [version code, features...]) -> one float64 score per row, NaN where that row's version failed.
CodedCall = Callable[[str, np.ndarray], Awaitable[np.ndarray]]
MemberScores = dict[str, np.ndarray]


@dataclass(eq=False)
class _Pending:
    code: float
    version: str
    features: np.ndarray
    future: asyncio.Future[np.ndarray]
    trace: SpanContext  # the caller's span: the batch span links to it


class _Lane:
    """The queue and dispatcher of one member runner."""

    def __init__(self, member: str, owner: RowBatcher) -> None:
        self.member = member
        self.owner = owner
        self.queue: deque[_Pending] = deque()
        self.queued_rows = 0
        self.inflight = 0
        self.starting = False  # a batch task is started and has not taken its rows yet

    def submit(self, code: float, version: str, features: np.ndarray) -> asyncio.Future[np.ndarray]:
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self.queue.append(_Pending(code, version, features, future, tracing.current_span_context()))
        self.queued_rows += len(features)
        self.dispatch()
        return future

    def dispatch(self) -> None:
        """Start a batch task when a slot is free; it takes its rows when it runs, not now."""
        if self.starting or not self.queue or self.inflight >= self.owner.max_inflight_batches:
            return
        self.starting = True
        self.inflight += 1
        # A fresh context: the batch span names its parent itself (a finishing batch dispatches the next one,
        # and must not become its parent).
        task = asyncio.get_running_loop().create_task(self._run(), context=contextvars.Context())
        self.owner._tasks.add(task)
        task.add_done_callback(self.owner._tasks.discard)

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        rows = 0
        while self.queue:
            head = self.queue[0]
            if batch and rows + len(head.features) > self.owner.max_batch_rows:
                break
            self.queue.popleft()
            self.queued_rows -= len(head.features)
            if head.future.done():  # its caller went away (cancelled): nothing to score
                continue
            batch.append(head)
            rows += len(head.features)
        return batch

    async def _run(self) -> None:
        batch: list[_Pending] = []
        taken = False
        try:
            # The requests that are about to submit join this batch (TAKE_AFTER_TURNS).
            for _ in range(TAKE_AFTER_TURNS):
                await asyncio.sleep(0)
            self.starting, taken = False, True
            batch = self._take()
            self.dispatch()  # rows past a full batch may start another one (max_inflight_batches > 1)
            if not batch:
                return
            coded = _coded(batch)
            spans = [item.trace for item in batch]
            with tracing.batch_span("entry_batch", spans, model=self.member, rows=len(coded), merged=len(batch)):
                scores = await self.owner.call(self.member, coded)
            labelled(ENTRY_BATCH_ROWS, self.member).observe(len(scores))
            labelled(ENTRY_BATCH_REQUESTS, self.member).observe(len(batch))
            start = 0
            for item in batch:
                stop = start + len(item.features)
                if not item.future.done():
                    self._settle(item, scores[start:stop])
                start = stop
        except BaseException as exc:
            # Never leave a caller waiting: whatever went wrong fails this batch's requests.
            error = exc if isinstance(exc, Exception) else Unavailable("the worker is shutting down")
            if not isinstance(exc, Unavailable | asyncio.CancelledError):
                log.exception("entry batch of %d requests to %s failed", len(batch), self.member)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
        finally:
            if not taken:  # cancelled before taking its rows
                self.starting = False
            self.inflight -= 1
            self.dispatch()

    def _settle(self, item: _Pending, part: np.ndarray) -> None:
        if np.isnan(part).any():
            # The runner marks the rows of a version it cannot load or score: this request fails, not its neighbours.
            message = f"model runner {self.member!r} cannot score version {item.version}"
            item.future.set_exception(Unavailable(message))
        else:
            item.future.set_result(part)


def _coded(batch: list[_Pending]) -> np.ndarray:
    """The batch's rows with their version code as the first column, as the runners take them."""
    sizes = [len(item.features) for item in batch]
    width = batch[0].features.shape[1]
    coded = np.empty((sum(sizes), width + 1), dtype=np.float64)
    coded[:, 0] = np.repeat([item.code for item in batch], sizes)
    start = 0
    for item, size in zip(batch, sizes, strict=True):
        coded[start : start + size, 1:] = item.features
        start += size
    return coded


class RowBatcher:
    """Coalesces the rows of concurrent requests of one event loop into runner batches, one lane per member."""

    def __init__(
        self,
        call: CodedCall,
        *,
        max_batch_rows: int,
        max_queued_rows: int,
        max_inflight_batches: int = 1,
        deadline_s: float | None = None,
    ) -> None:
        if max_queued_rows < max_batch_rows:
            raise ValueError("max_queued_rows must hold at least one full batch")
        self.call = call
        self.max_batch_rows = max_batch_rows
        self.max_queued_rows = max_queued_rows
        self.max_inflight_batches = max_inflight_batches
        self.deadline_s = deadline_s
        self._lanes: dict[str, _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def queued_rows(self, member: str) -> int:
        lane = self._lanes.get(member)
        return 0 if lane is None else lane.queued_rows

    async def score(self, version: str, members: Sequence[str], features: np.ndarray) -> MemberScores:
        """Every member's scores of ``features`` (encoded, validated rows) under ``version``."""
        n = len(features)
        if n == 0 or n > self.max_batch_rows:
            raise ValueError(f"a batched request holds 1..{self.max_batch_rows} rows, got {n}")
        lanes = [self._lane(m) for m in members]
        full = [lane.member for lane in lanes if lane.queued_rows + n > self.max_queued_rows]
        if full:
            ENTRY_QUEUE_REJECTED.inc()
            raise Unavailable(f"the worker's batch queue for {full[0]!r} is full; retry later")
        code = version_code(version)
        futures = [lane.submit(code, version, features) for lane in lanes]
        try:
            async with asyncio.timeout(self.deadline_s):
                results = await asyncio.gather(*futures)
        except TimeoutError:
            late = [lane.member for lane, future in zip(lanes, futures, strict=True) if not future.done()] or members
            message = f"model runner {late[0]!r} did not answer within {self.deadline_s:g} s; retry later"
            raise Unavailable(message) from None
        finally:
            for future in futures:  # unscored rows of a failed request need not be scored any more
                future.cancel()
        return dict(zip(members, results, strict=True))

    def _lane(self, member: str) -> _Lane:
        lane = self._lanes.get(member)
        if lane is None:
            lane = self._lanes[member] = _Lane(member, self)
        return lane
