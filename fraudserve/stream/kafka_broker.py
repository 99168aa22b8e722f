"""The broker on Kafka (confluent-kafka / librdkafka): a consumer group, outputs first, offsets after.

Delivery: at least once. ``commit`` produces the scores, alerts and dead letters, waits until the
brokers acknowledged every one (idempotent producer, acks=all), and only then commits the input
offsets. A worker that dies in between leaves its outputs written and its offsets uncommitted: the
partition's next owner scores those messages again. Every output is keyed by its source,
``<topic>/<partition>/<offset>`` (also its ``source_id`` field), so a reader recognises such
duplicates by key; with log compaction on the output topics they collapse to one.

Rebalances (cooperative-sticky: only the partitions that move are revoked): on revoke the offsets
of what is done are committed at once, so the next owner starts right after them; messages of a
revoked partition still in flight are neither written nor committed by this worker.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from fraudserve.errors import InvalidInput, Unavailable
from fraudserve.settings import Settings

from . import metrics
from .broker import CommitResult, DeadLetter, Delivery, GroupStats, Outcome, Reclaimed, Trimmed
from .messages import DATA_FIELD

log = logging.getLogger(__name__)

_FLUSH_TIMEOUT_S = 30.0
_REQUEST_TIMEOUT_S = 10.0
_Partition = tuple[str, int]


@dataclass(frozen=True)
class TopicNames:
    input: str
    output: str
    alerts: str
    dead_letter: str

    @classmethod
    def from_settings(cls, settings: Settings) -> TopicNames:
        return cls(
            settings.kafka_input_topic,
            settings.kafka_output_topic,
            settings.kafka_alerts_topic,
            settings.kafka_dead_letter_topic,
        )


def source_id(topic: str, partition: int, offset: int) -> str:
    return f"{topic}/{partition}/{offset}"


@contextmanager
def _unavailable() -> Iterator[None]:
    try:
        yield
    except KafkaException as exc:
        raise Unavailable(f"kafka: {exc.args[0] if exc.args else exc}") from exc


class KafkaBroker:
    """``Broker`` over one Kafka input topic read by one consumer group."""

    def __init__(
        self,
        bootstrap: str,
        topics: TopicNames,
        *,
        group: str,
        consumer: str,
        partitions: int = 3,
        session_timeout_ms: int = 10_000,
        hold_before_commit_s: float = 0.0,
        producer_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.group = group
        self.consumer_name = consumer
        self.partitions = partitions
        self.hold_before_commit_s = hold_before_commit_s
        common: dict[str, str | int | float | bool] = {"bootstrap.servers": bootstrap, "client.id": consumer}
        self._consumer = Consumer(
            {
                **common,
                "group.id": group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "partition.assignment.strategy": "cooperative-sticky",
                "session.timeout.ms": session_timeout_ms,
                "heartbeat.interval.ms": max(100, session_timeout_ms // 4),
            }
        )
        self._producer = Producer(
            {
                **common,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                **(producer_config or {}),
            }
        )
        self._common = common
        self._topics_ready = False
        self._subscribed = False
        # Offsets read and not yet finished, and the offset to commit next, per owned input partition.
        self._assigned: set[_Partition] = set()
        self._inflight: dict[_Partition, set[int]] = {}
        self._done_upto: dict[_Partition, int] = {}
        self._committed: dict[_Partition, int] = {}
        self._sources: dict[str, tuple[_Partition, int]] = {}

    @classmethod
    def connect(
        cls,
        settings: Settings,
        consumer: str,
        *,
        bootstrap: str | None = None,
        producer_config: Mapping[str, Any] | None = None,
    ) -> KafkaBroker:
        return cls(
            bootstrap or settings.kafka_bootstrap,
            TopicNames.from_settings(settings),
            group=settings.stream_group,
            consumer=consumer,
            partitions=settings.kafka_partitions,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            hold_before_commit_s=settings.kafka_fault_hold_before_commit_s,
            producer_config=producer_config,
        )

    def ensure_topics(self) -> None:
        """Creates the four topics if missing; a cluster that forbids it must have them already."""
        if self._topics_ready:
            return
        names = [self.topics.input, self.topics.output, self.topics.alerts, self.topics.dead_letter]
        with _unavailable(), AdminClient(self._common) as admin:
            existing = set(admin.list_topics(timeout=_REQUEST_TIMEOUT_S).topics)
            missing = [NewTopic(t, num_partitions=self.partitions) for t in dict.fromkeys(names) if t not in existing]
            if missing:
                for topic, future in admin.create_topics(missing, request_timeout=_REQUEST_TIMEOUT_S).items():
                    try:
                        future.result()
                        log.info("created topic %s (%d partitions)", topic, self.partitions)
                    except KafkaException as exc:
                        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                            raise
        self._topics_ready = True

    def ensure_group(self) -> None:
        self.ensure_topics()
        if not self._subscribed:
            self._consumer.subscribe(
                [self.topics.input], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
            )
            self._subscribed = True

    def read(self, count: int, block_ms: int) -> list[Delivery]:
        with _unavailable():
            messages = self._consumer.consume(num_messages=count, timeout=block_ms / 1000.0)
        deliveries = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise Unavailable(f"kafka: {error}")
                log.warning("kafka consumer: %s", error)
                continue
            if (message.topic(), message.partition()) not in self._assigned:
                # Fetched before its partition was revoked in this very call: the new owner reads it.
                continue
            deliveries.append(self._track(message))
        return deliveries

    def _track(self, message: Message) -> Delivery:
        topic, partition, offset = str(message.topic()), int(message.partition() or 0), int(message.offset() or 0)
        key = (topic, partition)
        self._inflight.setdefault(key, set()).add(offset)
        sid = _source_of(message)
        self._sources[sid] = (key, offset)
        kind, ms = message.timestamp()
        return Delivery(sid, _fields(message), 1, None if kind == TIMESTAMP_NOT_AVAILABLE else ms / 1000.0)

    def reclaim(self, min_idle_ms: int, count: int) -> Reclaimed:
        # The group coordinator hands a dead consumer's partitions to the others (session timeout);
        # they resume at its last committed offset: nothing to claim message by message.
        return Reclaimed([])

    def commit(self, outcomes: Sequence[Outcome]) -> CommitResult:
        if not outcomes:
            return CommitResult(0)
        owned = [o for o in outcomes if o.source_id in self._sources]
        # A partition revoked while its batch was in flight: its new owner scores those messages.
        revoked = len(outcomes) - len(owned)
        failures: list[str] = []

        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                failures.append(f"{message.topic()}: {error}")

        with _unavailable():
            for outcome in owned:
                value = json.dumps(dict(outcome.fields), separators=(",", ":")).encode()
                output_key = outcome.source_id.encode()
                targets = [self.topics.output]
                if isinstance(outcome, DeadLetter):
                    targets = [self.topics.dead_letter]
                elif outcome.alert:
                    targets.append(self.topics.alerts)
                for topic in targets:
                    self._produce(topic, value, output_key, delivered)
            left = self._producer.flush(_FLUSH_TIMEOUT_S)
        if failures or left:
            self._rewind([o.source_id for o in owned])
            raise Unavailable(f"kafka: outputs not acknowledged ({left} queued, errors: {failures[:3]})")
        if self.hold_before_commit_s > 0:
            log.warning(
                "fault injection: holding %.1f s between producing %d outcomes and committing their offsets",
                self.hold_before_commit_s,
                len(owned),
            )
            time.sleep(self.hold_before_commit_s)
        for outcome in owned:
            key, offset = self._sources.pop(outcome.source_id)
            self._inflight.get(key, set()).discard(offset)
            self._done_upto[key] = max(self._done_upto.get(key, 0), offset + 1)
        self._commit_done(list(self._done_upto))
        return CommitResult(len(owned), revoked)

    def _produce(self, topic: str, value: bytes, key: bytes, callback: Any) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=callback)
                return
            except BufferError:
                # The local queue is full: let delivery reports drain it.
                self._producer.poll(0.1)

    def _rewind(self, sids: Sequence[str]) -> None:
        """Re-reads, from the first unfinished offset, the partitions whose outputs were not acknowledged."""
        first: dict[_Partition, int] = {}
        for sid in sids:
            key, offset = self._sources.pop(sid)
            self._inflight.get(key, set()).discard(offset)
            first[key] = min(first.get(key, offset), offset)
        for (topic, partition), offset in first.items():
            try:
                self._consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:
                log.warning("could not rewind %s/%d to %d: %s", topic, partition, offset, exc)

    def _next_offset(self, key: _Partition) -> int | None:
        inflight = self._inflight.get(key)
        if inflight:
            return min(inflight)
        return self._done_upto.get(key)

    def _commit_done(self, keys: Sequence[_Partition]) -> None:
        offsets = []
        for key in keys:
            offset = self._next_offset(key)
            if offset is not None and offset > self._committed.get(key, -1):
                offsets.append(TopicPartition(key[0], key[1], offset))
        if not offsets:
            return
        with _unavailable():
            self._consumer.commit(offsets=offsets, asynchronous=False)
        for tp in offsets:
            self._committed[(tp.topic, tp.partition)] = tp.offset

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        metrics.KAFKA_REBALANCES.labels(event="assigned").inc(len(partitions))
        self._assigned |= {(tp.topic, tp.partition) for tp in partitions}
        log.info("assigned %s", _names(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        metrics.KAFKA_REBALANCES.labels(event="revoked").inc(len(partitions))
        keys = [(tp.topic, tp.partition) for tp in partitions]
        try:
            self._commit_done(keys)
        except Unavailable as exc:
            # Not fatal: the next owner re-reads from the last commit (at least once).
            log.warning("could not commit revoked partitions %s: %s", _names(partitions), exc.message)
        log.info("revoked %s (committed what was done)", _names(partitions))
        self._forget(keys)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost (session expired): others may own them already, so committing now could move their offsets.
        metrics.KAFKA_REBALANCES.labels(event="lost").inc(len(partitions))
        log.warning("lost %s without committing", _names(partitions))
        self._forget([(tp.topic, tp.partition) for tp in partitions])

    def _forget(self, keys: Sequence[_Partition]) -> None:
        gone = set(keys)
        self._assigned -= gone
        for key in gone:
            self._inflight.pop(key, None)
            self._done_upto.pop(key, None)
            self._committed.pop(key, None)
            with suppress(KeyError):
                metrics.KAFKA_PARTITION_LAG.remove(key[0], str(key[1]))
        self._sources = {sid: v for sid, v in self._sources.items() if v[0] not in gone}

    def publish(self, payloads: Sequence[Mapping[str, str]], maxlen: int | None = None) -> list[str]:
        """The ``data`` field is the message value; any other fields travel as headers."""
        if maxlen is not None:
            raise InvalidInput("Kafka trims by topic retention (retention.ms / retention.bytes)", field="--maxlen")
        self.ensure_topics()
        ids: dict[int, str] = {}
        failures: list[str] = []

        def delivered(index: int) -> Any:
            def callback(error: KafkaError | None, message: Message) -> None:
                if error is not None:
                    failures.append(str(error))
                else:
                    ids[index] = _source_of(message)

            return callback

        with _unavailable():
            for i, fields in enumerate(payloads):
                value = fields.get(DATA_FIELD)
                headers: list[tuple[str, str | bytes | None]] = [
                    (k, v.encode()) for k, v in fields.items() if k != DATA_FIELD
                ]
                while True:
                    try:
                        self._producer.produce(
                            self.topics.input,
                            value=None if value is None else value.encode(),
                            headers=headers or None,
                            on_delivery=delivered(i),
                        )
                        break
                    except BufferError:
                        self._producer.poll(0.1)
            left = self._producer.flush(_FLUSH_TIMEOUT_S)
        if failures or left:
            raise Unavailable(f"kafka: {left} messages not acknowledged, errors: {failures[:3]}")
        return [ids[i] for i in range(len(payloads))]

    def trim_input(self, maxlen: int) -> Trimmed:
        """Kafka trims by retention (per topic), not by count: refused, as ``fraud-stream produce`` refuses it."""
        raise InvalidInput("Kafka topics are trimmed by their retention settings, not by --maxlen", field="maxlen")

    def stats(self) -> GroupStats:
        """Lag = high watermark minus the group's committed offset (Kafka's consumer lag), summed over partitions."""
        with _unavailable():
            tps = self._partitions(self.topics.input)
            committed = self._consumer.committed(tps, timeout=_REQUEST_TIMEOUT_S) if tps else []
            length = lag = 0
            for tp in committed:
                low, high = self._consumer.get_watermark_offsets(tp, timeout=_REQUEST_TIMEOUT_S, cached=False)
                length += high - low
                start = tp.offset if tp.offset >= 0 else low
                partition_lag = max(0, high - start)
                lag += partition_lag
                if (tp.topic, tp.partition) in self._assigned:
                    metrics.KAFKA_PARTITION_LAG.labels(tp.topic, str(tp.partition)).set(partition_lag)
            outputs = {}
            for kind, topic in (
                ("output", self.topics.output),
                ("alerts", self.topics.alerts),
                ("dead_letter", self.topics.dead_letter),
            ):
                total = 0
                for tp in self._partitions(topic):
                    low, high = self._consumer.get_watermark_offsets(tp, timeout=_REQUEST_TIMEOUT_S, cached=False)
                    total += high - low
                outputs[kind] = total
        pending = sum(len(v) for v in self._inflight.values())
        return GroupStats(length=length, lag=lag, pending=pending, consumers={}, outputs=outputs)

    def _partitions(self, topic: str) -> list[TopicPartition]:
        meta = self._consumer.list_topics(topic, timeout=_REQUEST_TIMEOUT_S).topics.get(topic)
        if meta is None or meta.error is not None:
            return []
        return [TopicPartition(topic, p) for p in sorted(meta.partitions)]

    def close(self) -> None:
        try:
            self._producer.flush(_FLUSH_TIMEOUT_S)
            self._producer.close()
            # Leaves the group: the revoke callback commits what is done, the others take over at once.
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("closing the kafka consumer: %s", exc)


def _fields(message: Message) -> dict[str, str]:
    headers = message.headers() or []
    pairs = headers.items() if isinstance(headers, dict) else headers
    fields = {str(k): _text(v) for k, v in pairs}
    value = message.value()
    if value is not None:
        fields[DATA_FIELD] = _text(value)
    else:
        fields.pop(DATA_FIELD, None)
    return fields


def _names(partitions: Sequence[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}/{tp.partition}" for tp in partitions) or "nothing"


def _text(raw: str | bytes | None) -> str:
    if raw is None:
        return ""
    return raw if isinstance(raw, str) else raw.decode("utf-8", "backslashreplace")


def _source_of(message: Message) -> str:
    return source_id(str(message.topic()), int(message.partition() or 0), int(message.offset() or 0))
