"""fraud-stream against a real redis-server: crash recovery, dead letters, shared load, graceful stop.

Workers run as real `fraud-stream worker` processes (SIGKILL / SIGTERM them like an orchestrator
would); the dead-letter test drives one worker in-process to keep the suite short.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import redis

from fraudserve.errors import Unavailable
from fraudserve.inference import ScoredBatch
from fraudserve.local import local_core
from fraudserve.settings import Settings
from fraudserve.stream.local_redis import LocalRedis, free_port
from fraudserve.stream.messages import decode_message, encode_message
from fraudserve.stream.producer import generated, produce
from fraudserve.stream.redis_broker import RedisStreams
from fraudserve.stream.worker import StreamWorker, WorkerConfig
from models.transactions import generate_transactions

pytestmark = pytest.mark.integration

GROUP = "scorers"


@pytest.fixture(scope="module")
def local_redis() -> Iterator[LocalRedis]:
    with LocalRedis() as server:
        yield server


@pytest.fixture
def streams(request: pytest.FixtureRequest, local_redis: LocalRedis) -> dict[str, str]:
    """Stream names of their own for each test (one redis-server serves the module)."""
    prefix = request.node.name
    return {
        "FRAUD_REDIS_URL": local_redis.url,
        "FRAUD_STREAM_INPUT": f"{prefix}:in",
        "FRAUD_STREAM_OUTPUT": f"{prefix}:scores",
        "FRAUD_STREAM_ALERTS": f"{prefix}:alerts",
        "FRAUD_STREAM_DEAD_LETTER": f"{prefix}:dlq",
        "FRAUD_STREAM_GROUP": GROUP,
    }


def settings_of(streams: dict[str, str], **extra: object) -> Settings:
    values = {k.removeprefix("FRAUD_").lower(): v for k, v in streams.items()}
    return Settings(**values, **extra)  # type: ignore[arg-type]


def publish(settings: Settings, n: int, seed: int) -> list[str]:
    broker = RedisStreams.connect(settings, "producer")
    try:
        ids: list[str] = []
        messages = list(generated(n, seed))
        for start in range(0, n, 2_000):
            ids += broker.publish(messages[start : start + 2_000])
        return ids
    finally:
        broker.close()


class Workers:
    """`fraud-stream worker` processes; every one is killed at teardown."""

    def __init__(self, env: dict[str, str], logs: Path, worker_args: Sequence[str] = ()) -> None:
        self.env = env
        self.logs = logs
        self.worker_args = list(worker_args)  # e.g. the Kafka tests' --broker kafka --bootstrap ...
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, consumer: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{consumer}.log").open("wb")
        cmd = [sys.executable, "-m", "fraudserve.stream.cli", "worker", *self.worker_args, "--consumer", consumer]
        proc = subprocess.Popen([*cmd, *args], env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs[consumer] = proc
        return proc

    def log(self, consumer: str) -> str:
        return (self.logs / f"{consumer}.log").read_text()

    def logs_text(self) -> str:
        return "\n".join(f"--- {c}\n{self.log(c)[-4000:]}" for c in self.procs)

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def workers(streams: dict[str, str], trained: str, bentoml_home: Path, tmp_path: Path) -> Iterator[Workers]:
    env = {**os.environ, **streams, "BENTOML_HOME": str(bentoml_home), "FRAUD_MODEL_VERSION": trained}
    running = Workers(env, tmp_path)
    try:
        yield running
    finally:
        running.kill_all()


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, workers: Workers | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    logs = "" if workers is None else "\n".join(f"--- {c}\n{workers.log(c)[-3000:]}" for c in workers.procs)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{logs}")


def started(workers: Workers, *names: str) -> Callable[[], bool]:
    # Redis 7.0 creates a consumer at its first delivery, not its first read: watch the log instead.
    return lambda: all(f"consumer {name} started" in workers.log(name) for name in names)


def pending_of(client: redis.Redis, stream: str, consumer: str) -> int:
    return sum(int(c["pending"]) for c in client.xinfo_consumers(stream, GROUP) if c["name"] == consumer)


def scores_by_source(client: redis.Redis, stream: str) -> Counter[str]:
    return Counter(fields["source_id"] for _, fields in client.xrange(stream))


def holding(hold_dir: Path) -> dict[str, str]:
    """Env of a worker that parks its first scored batch before committing it (FRAUD_STREAM_FAULT_HOLD_DIR)."""
    hold_dir.mkdir(exist_ok=True)
    return {"FRAUD_STREAM_FAULT_HOLD_DIR": str(hold_dir)}


def held_ids(hold_dir: Path, consumer: str) -> list[str]:
    return list(json.loads((hold_dir / f"{consumer}.held").read_text()))


def test_a_consumer_killed_mid_batch_loses_nothing_and_writes_nothing_twice(
    workers: Workers, streams: dict[str, str], local_redis: LocalRedis, tmp_path: Path
) -> None:
    settings = settings_of(streams)
    client = local_redis.client()
    hold_dir = tmp_path / "hold"
    fast_claim = ("--claim-idle-ms", "1500", "--claim-interval-ms", "300", "--metrics-port", "0")
    # The victim's batch is small: the survivor retries its messages one at a time (poison isolation).
    # It parks its first scored batch before the commit, so the SIGKILL lands mid-batch on any machine.
    workers.start("victim", "--batch-size", "40", *fast_claim, env=holding(hold_dir))
    workers.start("survivor", "--batch-size", "200", *fast_claim)
    wait_for(started(workers, "victim", "survivor"), 60, "workers", workers)

    ids = publish(settings, 4_000, seed=101)
    wait_for(lambda: (hold_dir / "victim.held").exists(), 60, "the victim to hold a scored batch", workers)
    workers.procs["victim"].send_signal(signal.SIGKILL)
    workers.procs["victim"].wait(timeout=10)
    orphaned = [p["message_id"] for p in client.xpending_range(settings.stream_input, GROUP, "-", "+", 1_000, "victim")]
    assert orphaned, "the victim was not killed mid-batch (nothing pending): the test proves nothing"
    assert sorted(orphaned) == sorted(held_ids(hold_dir, "victim"))

    wait_for(lambda: client.xlen(settings.stream_output) >= len(ids), 120, "every score", workers)
    wait_for(lambda: client.xinfo_groups(settings.stream_input)[0]["pending"] == 0, 30, "no pending", workers)

    scored = scores_by_source(client, settings.stream_output)
    assert set(scored) == set(ids)
    assert max(scored.values()) == 1, "a message was written twice"
    assert client.xlen(settings.stream_dead_letter) == 0
    by_source = {f["source_id"]: f for _, f in client.xrange(settings.stream_output)}
    assert {by_source[i]["consumer"] for i in orphaned} == {"survivor"}
    alerts = {f["source_id"] for _, f in client.xrange(settings.stream_alerts)}
    assert alerts == {s for s, f in by_source.items() if f["is_fraud"] == "1"}
    assert "reclaimed" in workers.log("survivor")


def test_a_batch_reclaimed_from_a_live_slow_consumer_is_written_once(
    workers: Workers, streams: dict[str, str], local_redis: LocalRedis, tmp_path: Path
) -> None:
    settings = settings_of(streams)
    client = local_redis.client()
    hold_dir = tmp_path / "hold"
    claim = ("--claim-idle-ms", "1000", "--claim-interval-ms", "200", "--metrics-port", "0")
    # Published first (the group starts at the oldest message): the slow worker's first read is a full batch.
    ids = publish(settings, 600, seed=111)
    workers.start("slow", "--batch-size", "50", *claim, env=holding(hold_dir))
    wait_for(lambda: (hold_dir / "slow.held").exists(), 60, "the slow worker to hold a scored batch", workers)
    held = held_ids(hold_dir, "slow")
    assert len(held) == 50

    workers.start("fast", "--batch-size", "100", *claim)
    wait_for(lambda: client.xlen(settings.stream_output) >= len(ids), 60, "every score, by the fast worker", workers)
    wait_for(lambda: client.xinfo_groups(settings.stream_input)[0]["pending"] == 0, 30, "no pending", workers)
    assert workers.procs["slow"].poll() is None, "the slow worker must be alive: this is not the crash case"
    assert "reclaimed 50 messages" in workers.log("fast")

    # The slow worker now commits the 50 outcomes it scored before it was overtaken: all of them are refused.
    (hold_dir / "slow.release").touch()
    refused = "50 of 50 outcomes were already written"
    wait_for(
        lambda: refused in workers.log("slow") or client.xlen(settings.stream_output) > len(ids),
        30,
        "the late commit",
        workers,
    )
    scored = scores_by_source(client, settings.stream_output)
    assert set(scored) == set(ids) and max(scored.values()) == 1, "a message was written twice"
    by_source = {f["source_id"]: f for _, f in client.xrange(settings.stream_output)}
    assert {by_source[i]["consumer"] for i in held} == {"fast"}
    alerts = Counter(f["source_id"] for _, f in client.xrange(settings.stream_alerts))
    assert not alerts or max(alerts.values()) == 1
    assert set(alerts) == {s for s, f in by_source.items() if f["is_fraud"] == "1"}
    assert client.xlen(settings.stream_dead_letter) == 0
    assert refused in workers.log("slow")


def test_two_consumers_share_the_load_and_stop_gracefully(
    workers: Workers, streams: dict[str, str], local_redis: LocalRedis
) -> None:
    settings = settings_of(streams)
    client = local_redis.client()
    ports = {"left": free_port(), "right": free_port()}
    for name, port in ports.items():
        workers.start(name, "--batch-size", "100", "--metrics-port", str(port))
    wait_for(started(workers, *ports), 60, "workers", workers)

    first = publish(settings, 2_000, seed=202)
    wait_for(lambda: client.xlen(settings.stream_output) >= len(first), 60, "the first scores", workers)
    outputs = [f for _, f in client.xrange(settings.stream_output)]
    share = Counter(f["consumer"] for f in outputs)
    assert set(share) == {"left", "right"}, share
    assert min(share.values()) >= 200, f"one consumer did almost nothing: {share}"
    for name, port in ports.items():
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert f'fraud_stream_messages_total{{outcome="scored"}} {float(share[name])}' in text
        assert "fraud_stream_lag " in text
        assert "fraud_stream_batch_size_bucket" in text

    more = publish(settings, 10_000, seed=203)
    wait_for(lambda: client.xlen(settings.stream_output) >= len(first) + 500, 60, "more scores", workers)
    for proc in workers.procs.values():
        proc.send_signal(signal.SIGTERM)
    for name, proc in workers.procs.items():
        assert proc.wait(timeout=30) == 0, workers.log(name)
        assert "finishing the batch in flight" in workers.log(name)

    group = client.xinfo_groups(settings.stream_input)[0]
    assert group["pending"] == 0, "a batch read before SIGTERM was not finished"
    scored = scores_by_source(client, settings.stream_output)
    assert max(scored.values()) == 1
    assert len(scored) < len(first) + len(more), "the workers drained everything: SIGTERM came too late"
    assert len(scored) + group["lag"] == len(first) + len(more)


def test_bad_and_poison_messages_go_to_the_dead_letter_stream_with_reasons(
    streams: dict[str, str], local_redis: LocalRedis, trained: str
) -> None:
    settings = settings_of(streams, model_version=trained, stream_max_deliveries=3)
    client = local_redis.client()
    broker = RedisStreams.connect(settings, "in-process")
    broker.ensure_group()
    records = generate_transactions(30, seed=303).drop(columns="is_fraud").to_dict("records")
    bad = {
        "no-data": {"payload": "x"},
        "not-json": {"data": "{oops"},
        "range": {"data": json.dumps({**records[0], "amount": -3})},
        "category": {"data": json.dumps({**records[0], "merchant_category": "casino"})},
        "missing": {"data": json.dumps({k: v for k, v in records[0].items() if k != "hour"})},
    }
    expected = {
        "no-data": ("invalid_input", "data"),
        "not-json": ("invalid_input", "data"),
        "range": ("invalid_input", "data.amount"),
        "category": ("invalid_input", "data.merchant_category"),
        "missing": ("invalid_input", "data.hour"),
        "poison": ("max_deliveries", ""),
    }
    # A poison message: read, then left pending by consumers that "died" on it, delivery after delivery.
    (poison_id,) = broker.publish([encode_message(records[0], txn_id="poison")])
    client.xreadgroup(GROUP, "crashed", {settings.stream_input: ">"}, count=1)
    client.xclaim(settings.stream_input, GROUP, "crashed", 0, [poison_id], idle=60_000, retrycount=3)
    produce(broker, [encode_message(r, txn_id=i) for i, r in enumerate(records[:10])])
    bad_ids = dict(zip(bad, broker.publish(list(bad.values())), strict=True))
    produce(broker, [encode_message(r, txn_id=10 + i) for i, r in enumerate(records[10:])])
    bad_ids["poison"] = poison_id

    config = WorkerConfig(
        "in-process", batch_size=64, block_ms=50, claim_idle_ms=1_000, claim_interval_ms=1, max_deliveries=3
    )
    drain(StreamWorker(broker, local_core(settings), config), client, settings.stream_input)
    broker.close()

    letters = {f["source_id"]: f for _, f in client.xrange(settings.stream_dead_letter)}
    assert set(letters) == set(bad_ids.values())
    for name, (reason, field) in expected.items():
        letter = letters[bad_ids[name]]
        assert (letter["reason"], letter["field"]) == (reason, field), (name, letter)
        assert letter["message"]
    assert letters[poison_id]["deliveries"] == "4"
    assert json.loads(letters[bad_ids["range"]]["data"])["amount"] == -3
    scored = scores_by_source(client, settings.stream_output)
    assert len(scored) == len(records) and max(scored.values()) == 1
    assert not set(scored) & set(letters)


def test_a_scoring_failure_not_caused_by_the_message_is_retried_until_max_deliveries(
    streams: dict[str, str], local_redis: LocalRedis, trained: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_of(streams, model_version=trained, stream_max_deliveries=3)
    client = local_redis.client()
    broker = RedisStreams.connect(settings, "in-process")
    broker.ensure_group()
    core = local_core(settings)
    records = generate_transactions(22, seed=404).drop(columns="is_fraud").to_dict("records")
    ids = broker.publish([encode_message(r, txn_id=i) for i, r in enumerate(records)])
    (bad_id,) = broker.publish([{"data": "{oops"}])
    down_id, flaky_id = ids[0], ids[1]
    down = decode_message(down_id, encode_message(records[0]), core.schema).row
    flaky = decode_message(flaky_id, encode_message(records[1]), core.schema).row

    attempts: Counter[str] = Counter()
    pending_at_attempt: list[int] = []
    real_score = core.score

    async def score(rows: np.ndarray, *, transport: str) -> ScoredBatch:
        if len(rows) == 1:
            for name, row in (("down", down), ("flaky", flaky)):
                if np.array_equal(rows[0], row):
                    attempts[name] += 1
                    if name == "down":
                        pending_at_attempt.append(pending_of(client, settings.stream_input, "in-process"))
                        raise Unavailable("the model runtime is down")
                    if attempts[name] == 1:
                        raise RuntimeError("a transient runtime error")
        elif any(np.array_equal(r, down) for r in rows):
            raise Unavailable("the model runtime is down")
        return await real_score(rows, transport=transport)

    monkeypatch.setattr(core, "score", score)
    config = WorkerConfig(
        "in-process", batch_size=64, block_ms=50, claim_idle_ms=300, claim_interval_ms=1, max_deliveries=3
    )
    drain(StreamWorker(broker, core, config), client, settings.stream_input)
    broker.close()

    letters = {f["source_id"]: f for _, f in client.xrange(settings.stream_dead_letter)}
    assert set(letters) == {down_id, bad_id}
    # At fault: at once. Not at fault: after exactly max_deliveries deliveries, with the last error.
    assert (letters[bad_id]["reason"], letters[bad_id]["field"], letters[bad_id]["deliveries"]) == (
        "invalid_input",
        "data",
        "1",
    )
    assert (letters[down_id]["reason"], letters[down_id]["deliveries"]) == ("unavailable", "3")
    assert letters[down_id]["message"] == "the model runtime is down"
    assert attempts == {"down": 3, "flaky": 2}
    assert all(n >= 1 for n in pending_at_attempt), "the failed message was acknowledged between its deliveries"
    scored = scores_by_source(client, settings.stream_output)
    assert set(scored) == set(ids) - {down_id} and max(scored.values()) == 1


def test_produce_maxlen_never_trims_what_the_group_has_not_acknowledged(
    streams: dict[str, str], local_redis: LocalRedis
) -> None:
    settings = settings_of(streams)
    client = local_redis.client()
    broker = RedisStreams.connect(settings, "producer")
    stream = settings.stream_input
    # No group yet: nothing was delivered, so nothing may go.
    report = produce(broker, generated(150, seed=505), maxlen=10)
    assert (client.xlen(stream), report.trimmed, report.kept_over_maxlen) == (150, 0, 140)

    broker.ensure_group()
    read = client.xreadgroup(GROUP, "c1", {stream: ">"}, count=30)[0][1]
    delivered = [mid for mid, _ in read]
    client.xack(stream, GROUP, *delivered[:20])  # 20 done, 10 pending, 120 never delivered
    report = produce(broker, generated(50, seed=506), maxlen=10, chunk=25)
    entries = [mid for mid, _ in client.xrange(stream)]
    assert entries[0] == delivered[20], "only the 20 acknowledged messages may be trimmed"
    assert (len(entries), report.trimmed, report.kept_over_maxlen) == (180, 20, 170)
    # The consumer that held the pending ones died; they are still there to be reclaimed, none trimmed.
    claimed = client.xautoclaim(stream, GROUP, "c2", 0, "0-0", count=100)
    assert [mid for mid, _ in claimed[1]] == delivered[20:30] and not claimed[2]

    # Everything delivered, the pending ones not yet acknowledged: the cut stops at the oldest pending one.
    rest = [mid for mid, _ in client.xreadgroup(GROUP, "c1", {stream: ">"}, count=1_000)[0][1]]
    client.xack(stream, GROUP, *rest)
    report = produce(broker, generated(5, seed=507), maxlen=10)
    assert client.xrange(stream, count=1)[0][0] == delivered[20] and report.kept_over_maxlen == 175

    # All acknowledged: trimmed to exactly maxlen (the 5 new ones are undelivered, so they are kept).
    client.xack(stream, GROUP, *delivered[20:30])
    report = produce(broker, generated(1, seed=508), maxlen=10)
    assert (client.xlen(stream), report.kept_over_maxlen) == (10, 0)
    group = client.xinfo_groups(stream)[0]
    assert (group["pending"], group["lag"]) == (0, 6)
    broker.close()


def drain(worker: StreamWorker, client: redis.Redis, stream: str, timeout_s: float = 30.0) -> None:
    """Step an in-process worker until the group has nothing pending and nothing undelivered."""
    with worker:
        deadline = time.monotonic() + timeout_s
        while client.xinfo_groups(stream)[0]["pending"] or client.xinfo_groups(stream)[0]["lag"]:
            assert time.monotonic() < deadline, "the worker did not finish"
            worker.step()
