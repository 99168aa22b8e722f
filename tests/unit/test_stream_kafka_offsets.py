"""KafkaBroker's bookkeeping without a broker: outputs acknowledged before offsets, contiguous commits,
rewind on failed delivery, revoked partitions neither written nor committed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, TopicPartition

from fraudserve.errors import Unavailable
from fraudserve.stream.broker import DeadLetter, Scored, ScoreLayout
from fraudserve.stream.kafka_broker import KafkaBroker, TopicNames

TOPICS = TopicNames("in", "scores", "alerts", "dlq")


class FakeMessage:
    def __init__(self, partition: int, offset: int, value: bytes | None = b"{}") -> None:
        self._partition, self._offset, self._value = partition, offset, value

    def topic(self) -> str:
        return "in"

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes]]:
        return [("origin", b"test")]

    def timestamp(self) -> tuple[int, int]:
        return TIMESTAMP_CREATE_TIME, 1_700_000_000_000

    def error(self) -> None:
        return None


class FakeConsumer:
    def __init__(self, log: list[Any]) -> None:
        self.log = log
        self.queue: list[FakeMessage] = []

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        out, self.queue = self.queue[:num_messages], self.queue[num_messages:]
        return out

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.log.append(("commit", sorted((tp.partition, tp.offset) for tp in offsets)))

    def seek(self, tp: TopicPartition) -> None:
        self.log.append(("seek", tp.partition, tp.offset))


class FakeProducer:
    def __init__(self, log: list[Any]) -> None:
        self.log = log
        self.pending: list[tuple[Callable[..., None], str]] = []
        self.fail = False

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Callable[..., None]) -> None:
        self.log.append(("produce", topic, key.decode()))
        self.pending.append((on_delivery, topic))

    def flush(self, timeout: float) -> int:
        for callback, topic in self.pending:
            error = "broker down" if self.fail else None
            callback(error, type("M", (), {"topic": lambda self, t=topic: t})())
        self.pending = []
        return 0


@pytest.fixture
def broker() -> tuple[KafkaBroker, FakeConsumer, FakeProducer, list[Any]]:
    real = KafkaBroker("127.0.0.1:1", TOPICS, group="g", consumer="c")
    log: list[Any] = []
    consumer, producer = FakeConsumer(log), FakeProducer(log)
    real._consumer, real._producer = consumer, producer  # type: ignore[assignment]
    real._on_assign(consumer, [TopicPartition("in", 0), TopicPartition("in", 1)])  # type: ignore[arg-type]
    return real, consumer, producer, log


LAYOUT = ScoreLayout(columns=("fraud_probability",), shared=(("model_version", "v1"),))


def scored(sid: str, alert: bool = False) -> Scored:
    return Scored(sid, ("0.5",), alert, LAYOUT)


def test_outputs_are_acknowledged_before_the_offsets_are_committed(broker: Any) -> None:
    kafka, consumer, _, log = broker
    consumer.queue = [FakeMessage(0, 5), FakeMessage(0, 6), FakeMessage(1, 9, None)]
    deliveries = kafka.read(10, 100)
    assert [d.id for d in deliveries] == ["in/0/5", "in/0/6", "in/1/9"]
    assert deliveries[2].fields == {"origin": "test"}  # no value: no "data", dead-lettered by the worker
    assert deliveries[0].fields["data"] == "{}" and deliveries[0].appended_s == 1_700_000_000.0
    result = kafka.commit([scored("in/0/5", alert=True), scored("in/0/6"), DeadLetter("in/1/9", {"reason": "x"})])
    assert result.written == 3
    assert log == [
        ("produce", "scores", "in/0/5"),
        ("produce", "alerts", "in/0/5"),
        ("produce", "scores", "in/0/6"),
        ("produce", "dlq", "in/1/9"),
        ("commit", [(0, 7), (1, 10)]),
    ]


def test_an_offset_is_committed_only_once_everything_before_it_is_done(broker: Any) -> None:
    kafka, consumer, _, log = broker
    consumer.queue = [FakeMessage(0, 1), FakeMessage(0, 2), FakeMessage(0, 3)]
    kafka.read(10, 100)
    kafka.commit([scored("in/0/2"), scored("in/0/3")])
    assert log[-1] == ("commit", [(0, 1)])  # 1 is still in flight: nothing past it
    kafka.commit([scored("in/0/1")])
    assert log[-1] == ("commit", [(0, 4)])


def test_outputs_not_acknowledged_are_not_committed_and_are_read_again(broker: Any) -> None:
    kafka, consumer, producer, log = broker
    consumer.queue = [FakeMessage(0, 4), FakeMessage(0, 5)]
    kafka.read(10, 100)
    producer.fail = True
    with pytest.raises(Unavailable):
        kafka.commit([scored("in/0/4"), scored("in/0/5")])
    assert not [e for e in log if e[0] == "commit"]
    assert log[-1] == ("seek", 0, 4)


def test_a_revoked_partition_commits_what_is_done_and_its_late_outcomes_are_dropped(broker: Any) -> None:
    kafka, consumer, _, log = broker
    consumer.queue = [FakeMessage(0, 0), FakeMessage(1, 0), FakeMessage(1, 1)]
    kafka.read(10, 100)
    kafka.commit([scored("in/1/0")])
    kafka._on_revoke(consumer, [TopicPartition("in", 1)])
    assert log[-1] == ("commit", [(1, 1)])
    result = kafka.commit([scored("in/0/0"), scored("in/1/1")])
    assert (result.written, result.duplicates) == (1, 1)
    assert ("produce", "scores", "in/1/1") not in log
    consumer.queue = [FakeMessage(1, 2)]  # fetched before the revoke, returned after it
    assert kafka.read(10, 100) == []
