"""The consumer loop: reclaim -> read -> decode -> score -> write + ack, one micro-batch at a time.

Lifecycle of one batch (each step's contract):
- plan:   split deliveries into dead (delivered more than ``max_deliveries`` times), singles
          (redelivered: each is scored and committed alone, so a poison message that kills the
          worker takes only itself down next time) and one fresh batch.
- decode: each message validated alone with the schema; a bad one becomes a DeadLetter naming
          the field, its neighbours are unaffected.
- score:  the valid rows of the batch in one call of the inference core; if it fails, each row alone.
          A row that fails alone with InvalidInput is at fault: dead-lettered at once. Any other
          failure (model or runtime: Unavailable, a bug, ...) is not the message's fault: it gets no
          outcome, stays pending, is reclaimed after ``claim_idle_ms`` and retried; only its
          ``max_deliveries``-th failed delivery dead-letters it, with the last error.
- commit: outputs written and the source messages acknowledged in one atomic broker step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fraudserve import tracing
from fraudserve.errors import InvalidInput, PoisonMessage, Unavailable
from fraudserve.inference import InferenceCore

from . import metrics
from .broker import Broker, DeadLetter, Delivery, Outcome, Scored, ScoreLayout
from .messages import MessageDecoder, dead_letter_fields, score_layout, score_values

log = logging.getLogger(__name__)

TRANSPORT = "stream"
_STATS_INTERVAL_S = 1.0
_MAX_BACKOFF_S = 5.0


@dataclass(frozen=True)
class WorkerConfig:
    consumer: str
    batch_size: int
    block_ms: int
    claim_idle_ms: int
    claim_interval_ms: int
    max_deliveries: int
    fault_hold_dir: Path | None = None


@dataclass(frozen=True)
class Plan:
    dead: list[Delivery]
    singles: list[Delivery]
    batch: list[Delivery]


def plan(deliveries: Sequence[Delivery], max_deliveries: int) -> Plan:
    dead = [d for d in deliveries if d.deliveries > max_deliveries]
    singles = [d for d in deliveries if 1 < d.deliveries <= max_deliveries]
    batch = [d for d in deliveries if d.deliveries <= 1]
    return Plan(dead, singles, batch)


class StreamWorker:
    def __init__(self, broker: Broker, core: InferenceCore, config: WorkerConfig) -> None:
        self.broker = broker
        self.core = core
        self.config = config
        self.stopping = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._next_claim = 0.0
        self._next_stats = 0.0
        self._stats_since = time.monotonic()
        self._finished_since_stats = 0
        self._held = False
        self._retrying = 0
        self.decoder = MessageDecoder(core.schema)
        self._layouts: dict[tuple[tuple[str, ...], float, str], ScoreLayout] = {}

    def __enter__(self) -> StreamWorker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._loop.close()

    def request_stop(self) -> None:
        """Graceful: the batch in flight is finished and committed, then ``run`` returns."""
        self.stopping.set()

    def run(self) -> None:
        self.broker.ensure_group()
        log.info("consumer %s started", self.config.consumer)
        failures = scoring_failures = 0
        while not self.stopping.is_set():
            try:
                self.step()
                failures = 0
            except Unavailable as exc:
                failures += 1
                metrics.BROKER_ERRORS.inc()
                # What this consumer read but did not commit stays pending and is reclaimed later.
                backoff = min(_MAX_BACKOFF_S, 0.1 * 2**failures)
                log.warning("broker unavailable (%s); retrying in %.1f s", exc.message, backoff)
                self.stopping.wait(backoff)
                continue
            # While the model fails, reading more only moves messages into the pending list faster.
            scoring_failures = scoring_failures + 1 if self._retrying else 0
            if scoring_failures:
                self.stopping.wait(min(_MAX_BACKOFF_S, 0.1 * 2**scoring_failures))
        log.info("consumer %s stopped", self.config.consumer)

    def step(self) -> int:
        """One iteration: reclaim stale messages when due, then read and handle new ones."""
        handled = 0
        self._retrying = 0
        now = time.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + self.config.claim_interval_ms / 1000.0
            reclaimed = self.broker.reclaim(self.config.claim_idle_ms, self.config.batch_size)
            if reclaimed.trimmed_ids:
                metrics.TRIMMED.inc(len(reclaimed.trimmed_ids))
                log.error(
                    "%d pending messages were trimmed from the input before being scored", len(reclaimed.trimmed_ids)
                )
            if reclaimed.deliveries:
                metrics.RECLAIMED.inc(len(reclaimed.deliveries))
                log.info("reclaimed %d messages from stalled consumers", len(reclaimed.deliveries))
                handled += self.handle(reclaimed.deliveries)
        if not self.stopping.is_set():
            handled += self.handle(self.broker.read(self.config.batch_size, self.config.block_ms))
        self._update_stats()
        return handled

    def handle(self, deliveries: Sequence[Delivery]) -> int:
        parts = plan(deliveries, self.config.max_deliveries)
        batches = [[d] for d in parts.singles]
        if parts.batch:
            batches.append(parts.batch)
        if parts.dead:
            limit = self.config.max_deliveries
            reason = f"delivered more than {limit} times without being acknowledged; not scored"
            self._commit(parts.dead, [self._dead(d, PoisonMessage(reason)) for d in parts.dead], time.perf_counter())
        for batch in batches:
            started = time.perf_counter()
            outcomes = self.process(batch)
            self._hold(batch)
            if outcomes:
                self._commit(batch, outcomes, started)
        return len(deliveries)

    def process(self, batch: Sequence[Delivery]) -> list[Outcome]:
        with tracing.span("stream.micro_batch", messages=len(batch), consumer=self.config.consumer):
            return self._process(batch)

    def _process(self, batch: Sequence[Delivery]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        rows: list[list[float]] = []
        valid: list[Delivery] = []
        txn_ids: list[str | None] = []
        for d in batch:
            try:
                values, txn_id = self.decoder.values(d.fields)
            except Exception as exc:  # noqa: BLE001 - any decode failure is this message's fault alone
                outcomes.append(self._dead(d, exc))
                continue
            rows.append(values)
            valid.append(d)
            txn_ids.append(txn_id)
        if valid:
            outcomes += self._score(np.array(rows, dtype=np.float64), valid, txn_ids)
        return outcomes

    def _score(self, matrix: np.ndarray, batch: Sequence[Delivery], txn_ids: Sequence[str | None]) -> list[Outcome]:
        try:
            scored = self._loop.run_until_complete(self.core.score(matrix, transport=TRANSPORT))
        except Exception as exc:  # noqa: BLE001 - isolate the failing row; _failed decides retry or dead letter
            if len(batch) == 1:
                return self._failed(batch[0], exc)
            log.warning("scoring a batch of %d failed (%s); scoring its rows one at a time", len(batch), exc)
            return [
                o
                for i in range(len(batch))
                for o in self._score(matrix[i : i + 1], batch[i : i + 1], txn_ids[i : i + 1])
            ]
        layout = self._layout(tuple(scored.member_scores), scored.threshold, scored.version)
        members = [column.tolist() for column in scored.member_scores.values()]
        rows = zip(batch, txn_ids, scored.probabilities.tolist(), scored.decisions.tolist(), *members, strict=True)
        return [Scored(d.id, score_values(txn_id, p, alert, ms), alert, layout) for d, txn_id, p, alert, *ms in rows]

    def _layout(self, members: tuple[str, ...], threshold: float, version: str) -> ScoreLayout:
        key = (members, threshold, version)
        layout = self._layouts.get(key)
        if layout is None:
            layout = score_layout(members, threshold=threshold, model_version=version, consumer=self.config.consumer)
            self._layouts[key] = layout
        return layout

    def _failed(self, delivery: Delivery, error: Exception) -> list[Outcome]:
        """A message that failed to score alone: dead-lettered if at fault or out of deliveries, else retried."""
        limit = self.config.max_deliveries
        if isinstance(error, InvalidInput):
            log.warning("message %s is invalid (%s); dead-lettered", delivery.id, error.message)
            return [self._dead(delivery, error)]
        if delivery.deliveries >= limit:
            log.error(
                "scoring message %s failed on delivery %d of %d; dead-lettered",
                delivery.id,
                delivery.deliveries,
                limit,
                exc_info=error,
            )
            return [self._dead(delivery, error)]
        # No outcome, so no XACK: the message stays pending with this consumer and is reclaimed (by
        # any consumer, this one included) once idle for claim_idle_ms; XAUTOCLAIM counts the delivery.
        log.warning(
            "scoring message %s failed on delivery %d of %d (%s: %s); left pending for a retry",
            delivery.id,
            delivery.deliveries,
            limit,
            type(error).__name__,
            error,
        )
        self._retrying += 1
        metrics.MESSAGES.labels(outcome="retry").inc()
        return []

    def _hold(self, batch: Sequence[Delivery]) -> None:
        """Fault injection for tests (FRAUD_STREAM_FAULT_HOLD_DIR): park the first batch between score and commit.

        The ``.held`` file tells a test that this consumer now holds those messages unacknowledged, so a kill
        or a reclaim lands mid-batch by construction rather than by timing.
        """
        hold_dir = self.config.fault_hold_dir
        if hold_dir is None or self._held:
            return
        self._held = True
        name = self.config.consumer
        release = hold_dir / f"{name}.release"
        tmp = hold_dir / f".{name}.held.tmp"
        tmp.write_text(json.dumps([d.id for d in batch]))
        os.replace(tmp, hold_dir / f"{name}.held")
        log.warning("fault injection: holding a batch of %d before its commit until %s exists", len(batch), release)
        while not release.exists() and not self.stopping.is_set():
            self.stopping.wait(0.01)
        log.warning("fault injection: released; committing the held batch")

    def _dead(self, delivery: Delivery, error: Exception) -> DeadLetter:
        fields = dead_letter_fields(
            delivery.id, delivery.fields, error, deliveries=delivery.deliveries, consumer=self.config.consumer
        )
        return DeadLetter(delivery.id, fields)

    def _commit(self, batch: Sequence[Delivery], outcomes: list[Outcome], started: float) -> None:
        result = self.broker.commit(outcomes)
        appended = {d.id: d.appended_s for d in batch}
        now = time.time()
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.observe(len(outcomes))
        if result.duplicates:
            metrics.MESSAGES.labels(outcome="duplicate").inc(result.duplicates)
            log.info("%d of %d outcomes were already written by another consumer", result.duplicates, len(outcomes))
        # Per-outcome counts assume the duplicates (rare: a reclaimed but still running consumer) were scores.
        for o in outcomes:
            if isinstance(o, DeadLetter):
                metrics.DEAD_LETTERS.labels(reason=o.fields["reason"]).inc()
            else:
                appended_s = appended[o.source_id]
                if appended_s is not None:
                    metrics.END_TO_END_SECONDS.observe(max(0.0, now - appended_s))
                if o.alert:
                    metrics.ALERTS.inc()
        dead = sum(isinstance(o, DeadLetter) for o in outcomes)
        if dead:
            metrics.MESSAGES.labels(outcome="dead_letter").inc(dead)
        scored = len(outcomes) - dead - result.duplicates
        if scored > 0:
            metrics.MESSAGES.labels(outcome="scored").inc(scored)
        self._finished_since_stats += len(outcomes)

    def _update_stats(self) -> None:
        now = time.monotonic()
        if now < self._next_stats:
            return
        self._next_stats = now + _STATS_INTERVAL_S
        metrics.THROUGHPUT.set(self._finished_since_stats / max(now - self._stats_since, 1e-3))
        self._stats_since, self._finished_since_stats = now, 0
        stats = self.broker.stats()
        if stats.lag is not None:
            metrics.LAG.set(stats.lag)
        metrics.PENDING.set(stats.pending)
