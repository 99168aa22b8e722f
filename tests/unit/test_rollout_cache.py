"""The two-level response cache: L1 in-process LRU, L2 Redis (a dict stand-in, and a real redis-server)."""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest

from fraudserve.launcher import PROJECT_ROOT
from fraudserve.rollout.cache import RedisScores, ResponseCache, build_cache, decode_scores, encode_scores
from fraudserve.settings import Settings
from fraudserve.stream.local_redis import LocalRedis, free_port

ROWS = np.array([[1.0, -0.0, 3.5], [2.0, 7.0, 0.25], [3.0, 1.0, 1.0]])
SCORES = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]])


class DictScores(RedisScores):
    """L2 without a server: a dict shared by the caches (workers) given it, TTLs ignored."""

    def __init__(self, store: dict[bytes, bytes]) -> None:
        super().__init__("redis://unused", namespace="t", timeout_s=1.0, backoff_s=1.0)
        self.store = store
        self.calls = 0

    async def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        self.calls += 1
        return [self.store.get(k) for k in keys]

    async def set_many(self, items: list[tuple[bytes, bytes]], ttl_s: float) -> None:
        self.calls += 1
        self.store.update(items)


@pytest.fixture(scope="module")
def local_redis() -> Iterator[LocalRedis]:
    with LocalRedis() as server:
        yield server


def test_encoding_is_plain_float64_and_checked() -> None:
    value = encode_scores(np.array([0.25, 1.0, -2.5]), expires_at=1000.0)
    assert value == struct.pack("<4d", 1000.0, 0.25, 1.0, -2.5)  # no pickle: 8 bytes per number
    decoded = decode_scores(value, 3, now=999.0)
    assert decoded is not None and decoded[1] == 1000.0
    np.testing.assert_array_equal(decoded[0], [0.25, 1.0, -2.5])
    assert decode_scores(value, 3, now=1000.0) is None  # expired
    assert decode_scores(value, 2, now=0.0) is None  # another member count: never misread
    assert decode_scores(struct.pack("<4d", float("nan"), 0, 0, 0), 3, now=0.0) is None
    assert decode_scores(b"\x80\x04\x95garbage", 3, now=0.0) is None


def test_l2_hit_fills_l1_and_generations_do_not_mix() -> None:
    store: dict[bytes, bytes] = {}
    worker1 = ResponseCache(100, 60.0, shared=DictScores(store))
    worker2 = ResponseCache(100, 60.0, shared=DictScores(store))
    keys = worker1.keys("v1", ROWS)

    async def run() -> None:
        assert await worker1.lookup(keys, width=3, generation=1) == [None] * 3
        await worker1.store(keys, SCORES, generation=1)
        found = await worker2.lookup(keys[::-1], width=3, generation=1)
        np.testing.assert_array_equal(np.vstack(found), SCORES[::-1])  # type: ignore[arg-type]
        assert worker2.stats() == {
            "entries": 3,
            "hits": 0,
            "misses": 3,
            "hit_rate": 0.0,
            "redis": {"hits": 3, "misses": 0, "errors": 0},
        }
        assert worker2.shared is not None
        calls = worker2.shared.calls
        again = await worker2.lookup(keys, width=3, generation=1)
        assert all(v is not None for v in again) and worker2.shared.calls == calls  # L1 answered, no round trip
        assert await worker2.lookup(worker2.keys("v2", ROWS), width=3, generation=1) == [None] * 3  # by version
        worker2.clear()  # a policy change: L1 emptied, L2 read under the next generation
        assert await worker2.lookup(keys, width=3, generation=2) == [None] * 3
        assert worker2.stats()["redis"] == {"hits": 3, "misses": 6, "errors": 0}

    asyncio.run(run())


def test_l2_hit_keeps_its_remaining_ttl_in_l1() -> None:
    store: dict[bytes, bytes] = {}
    wall, mono = [1000.0], [0.0]
    writer = ResponseCache(100, 10.0, shared=DictScores(store), wall_clock=lambda: wall[0])
    reader = ResponseCache(100, 10.0, shared=DictScores(store), wall_clock=lambda: wall[0], clock=lambda: mono[0])
    keys = writer.keys("v1", ROWS[:1])

    async def run() -> None:
        await writer.store(keys, SCORES[:1], generation=0)
        wall[0] += 8.0  # the entry has 2 s left
        assert (await reader.lookup(keys, width=3, generation=0))[0] is not None
        mono[0] += 2.5
        wall[0] += 2.5
        assert await reader.lookup(keys, width=3, generation=0) == [None]  # not 10 s more in L1

    asyncio.run(run())


def test_memory_backend_has_no_l2() -> None:
    assert build_cache(Settings(cache_enabled=False)) is None
    memory = build_cache(Settings(cache_enabled=True))
    assert memory is not None and memory.shared is None
    shared = build_cache(Settings(cache_enabled=True, cache_backend="redis", model_prefix="roll"))
    assert shared is not None and shared.shared is not None
    assert shared.shared.key(7, ("v1", b"\x00\x01")) == b"fraud:cache:roll:g7:v1:\x00\x01"


WRITER = """
import asyncio, sys
import numpy as np
from fraudserve.rollout.cache import RedisScores, ResponseCache

async def main():
    shared = RedisScores(sys.argv[1], namespace="x", timeout_s=2.0, backoff_s=1.0)
    cache = ResponseCache(10, 60.0, shared=shared)
    rows = np.array([[1.0, -0.0, 3.5], [2.0, 7.0, 0.25]])
    await cache.store(cache.keys("v9", rows), np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]), generation=3)
    await shared.aclose()

asyncio.run(main())
"""


def test_a_row_written_by_one_process_is_read_by_another(local_redis: LocalRedis) -> None:
    subprocess.run([sys.executable, "-c", WRITER, local_redis.url], cwd=PROJECT_ROOT, check=True, timeout=60)
    shared = RedisScores(local_redis.url, namespace="x", timeout_s=2.0, backoff_s=1.0)
    cache = ResponseCache(10, 60.0, shared=shared)
    rows = np.array([[1.0, 0.0, 3.5], [2.0, 7.0, 0.25], [5.0, 5.0, 5.0]])

    async def run() -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:
        try:
            return (
                await cache.lookup(cache.keys("v9", rows), width=3, generation=3),
                await ResponseCache(10, 60.0, shared=shared).lookup(cache.keys("v9", rows), width=3, generation=4),
            )
        finally:
            await shared.aclose()

    found, next_generation = asyncio.run(run())
    np.testing.assert_array_equal(found[0], [0.1, 0.2, 0.3])  # type: ignore[arg-type]
    np.testing.assert_array_equal(found[1], [0.4, 0.5, 0.6])  # type: ignore[arg-type]
    assert found[2] is None and next_generation == [None] * 3
    raw = local_redis.client()
    try:
        ttl = raw.pttl(shared.key(3, cache.keys("v9", rows)[0]))
        assert isinstance(ttl, int) and 0 < ttl <= 60_000  # Redis drops it by itself
    finally:
        raw.close()


def test_redis_down_or_silent_is_a_fast_miss() -> None:
    async def run() -> None:
        done = asyncio.Event()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await done.wait()  # accepts and never answers: a stalled Redis
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            for url in (f"redis://127.0.0.1:{free_port()}/0", f"redis://127.0.0.1:{port}/0"):
                shared = RedisScores(url, namespace="x", timeout_s=0.1, backoff_s=60.0)
                cache = ResponseCache(10, 60.0, shared=shared)
                keys = cache.keys("v1", ROWS)
                started = time.monotonic()
                assert await cache.lookup(keys, width=3, generation=0) == [None] * 3
                await cache.store(keys, SCORES, generation=0)  # skipped: backing off
                found = await cache.lookup(keys, width=3, generation=0)
                assert all(v is not None for v in found)  # L1 still works
                assert time.monotonic() - started < 1.0, url
                assert shared.errors == 1 and cache.stats()["redis"] == {"hits": 0, "misses": 3, "errors": 1}
                await shared.aclose()
        finally:
            done.set()
            server.close()
            await server.wait_closed()

    asyncio.run(run())


def test_redis_is_used_again_after_its_back_off(local_redis: LocalRedis) -> None:
    now = [0.0]
    shared = RedisScores(local_redis.url, namespace="back", timeout_s=2.0, backoff_s=5.0, clock=lambda: now[0])
    writer = ResponseCache(10, 60.0, shared=shared)
    keys = writer.keys("v1", ROWS)

    async def run() -> None:
        try:
            local_redis.stop()
            await writer.store(keys, SCORES, generation=0)  # refused: counted, then backing off
            local_redis.__enter__()  # the same port again
            await writer.store(keys, SCORES, generation=0)  # still backing off: not written
            reader = ResponseCache(10, 60.0, shared=shared)
            assert await reader.lookup(keys, width=3, generation=0) == [None] * 3
            now[0] = 5.0
            await writer.store(keys, SCORES, generation=0)
            found = await ResponseCache(10, 60.0, shared=shared).lookup(keys, width=3, generation=0)
            assert all(v is not None for v in found) and shared.errors == 1
        finally:
            await shared.aclose()

    asyncio.run(run())
