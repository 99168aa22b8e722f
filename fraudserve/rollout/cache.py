"""Response cache: the member scores of a row, keyed by model version and the encoded row.

Two levels. L1 is an in-process LRU with a TTL, per API worker. L2 (``FRAUD_CACHE_BACKEND=redis``)
is a Redis shared by every worker and replica; a row missing in L1 is looked up there, and an L2
hit fills L1. The key is the concrete version plus the bytes of the row as the schema encodes it
(field order, categories and types fixed by the schema), so two JSON bodies that differ only in
key order or number formatting share an entry. Only the member scores are kept; combine and
threshold run on every request, so a threshold setting never serves stale decisions. Shadow
scoring neither reads nor writes it.

Invalidation: L1 is cleared on every policy or version change. L2 keys carry a generation, the
revision of the shared policy (fraudserve/rollout/state.py), which every such change bumps and
every worker adopts; entries of older generations are never read again and expire by their TTL,
so nothing is scanned or deleted.

L2 values are numbers, never pickles: float64 little-endian, the entry's expiry (Unix seconds)
then one score per member in the order of the version's members (the version is in the key).
A Redis that is down, slow or answers garbage only turns lookups into misses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from fraudserve.rollout.metrics import CACHE_ERRORS, CACHE_REQUESTS
from fraudserve.settings import Settings

log = logging.getLogger(__name__)

Key = tuple[str, bytes]
_FLOAT = np.dtype("<f8")


def encode_scores(scores: np.ndarray, expires_at: float) -> bytes:
    """One L2 value: ``expires_at`` (Unix seconds) and the member scores, as float64 little-endian."""
    return np.concatenate(([expires_at], np.asarray(scores, dtype=np.float64).reshape(-1))).astype(_FLOAT).tobytes()


def decode_scores(value: bytes, width: int, now: float) -> tuple[np.ndarray, float] | None:
    """The member scores and expiry of an L2 value; None when it is expired or not ``width`` scores."""
    if len(value) != _FLOAT.itemsize * (width + 1):
        return None
    data = np.frombuffer(value, dtype=_FLOAT)
    expires_at = float(data[0])
    if not expires_at > now:  # also refuses NaN
        return None
    return data[1:].astype(np.float64), expires_at


class RedisScores:
    """L2: raw values in Redis, one round trip per call (MGET; pipelined SET PX), never raising."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        timeout_s: float,
        backoff_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.namespace = namespace
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self._clock = clock
        self._redis: aioredis.Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._down_until = 0.0
        self._down = False
        self.errors = 0

    def key(self, generation: int, key: Key) -> bytes:
        version, row = key
        return f"{self.namespace}:g{generation}:{version}:".encode() + row

    def _client(self) -> aioredis.Redis:
        # An asyncio client belongs to the loop it connected in (tests run several loops).
        loop = asyncio.get_running_loop()
        if self._redis is None or self._loop is not loop:
            # The timeouts bound each connect, send and read, i.e. Redis's answer, not this process's own
            # work of packing a big request's keys (a deadline on the whole call would count that as Redis down).
            self._redis = aioredis.Redis.from_url(
                self.url,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
                # A retry would multiply the time a request waits for a sick Redis.
                retry=Retry(NoBackoff(), 0),
            )
            self._loop = loop
        return self._redis

    async def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        if not keys or self._skipping():
            return [None] * len(keys)
        try:
            values = await self._client().mget(keys)
        except Exception as exc:  # noqa: BLE001 - the cache must never fail a request
            self._failed("get", exc)
            return [None] * len(keys)
        self._recovered()
        return [v if isinstance(v, bytes) else None for v in values]

    async def set_many(self, items: list[tuple[bytes, bytes]], ttl_s: float) -> None:
        if not items or self._skipping():
            return
        ttl_ms = max(1, int(ttl_s * 1000))
        try:
            async with self._client().pipeline(transaction=False) as pipe:
                for key, value in items:
                    pipe.set(key, value, px=ttl_ms)
                await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - the cache must never fail a request
            self._failed("set", exc)
            return
        self._recovered()

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    def _skipping(self) -> bool:
        return self._down and self._clock() < self._down_until

    def _failed(self, op: str, exc: BaseException) -> None:
        self.errors += 1
        CACHE_ERRORS.labels(level="redis", op=op).inc()
        if not self._down:
            log.warning(
                "response cache: Redis %s failed (%r); serving without it, next try in %.1f s",
                op,
                exc,
                self.backoff_s,
            )
        self._down = True
        self._down_until = self._clock() + self.backoff_s

    def _recovered(self) -> None:
        if self._down:
            log.info("response cache: Redis answers again")
            self._down = False


class ResponseCache:
    def __init__(
        self,
        max_entries: int,
        ttl_s: float,
        *,
        shared: RedisScores | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.shared = shared
        self._clock = clock
        self._wall_clock = wall_clock  # L2 expiries are read by other hosts: Unix time, not monotonic
        self._rows: OrderedDict[Key, tuple[float, np.ndarray]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.shared_hits = 0
        self.shared_misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    @staticmethod
    def keys(version: str, features: np.ndarray) -> list[Key]:
        # + 0.0 turns -0.0 into 0.0: equal values, equal bytes.
        rows = np.ascontiguousarray(np.asarray(features, dtype=np.float64) + 0.0)
        return [(version, row.tobytes()) for row in rows]

    # --- both levels (the inference core) ----------------------------------------------------

    async def lookup(self, keys: list[Key], *, width: int, generation: int) -> list[np.ndarray | None]:
        """L1, then L2 for L1's misses (``width`` member scores per row); an L2 hit fills L1."""
        found = self.get_many(keys)
        missing = [i for i, row in enumerate(found) if row is None]
        if self.shared is None or not missing:
            return found
        values = await self.shared.get_many([self.shared.key(generation, keys[i]) for i in missing])
        now, wall = self._clock(), self._wall_clock()
        hits = 0
        for i, value in zip(missing, values, strict=True):
            decoded = decode_scores(value, width, wall) if value is not None else None
            if decoded is not None:
                scores, expires_at = decoded
                found[i] = scores
                # Another host's clock may run ahead: never longer than our own TTL.
                self._insert(keys[i], scores, now + min(expires_at - wall, self.ttl_s))
                hits += 1
        self._evict()
        self.shared_hits += hits
        self.shared_misses += len(missing) - hits
        _count("redis", hits, len(missing))
        return found

    async def store(self, keys: list[Key], values: np.ndarray, *, generation: int) -> None:
        """Scores just computed, into both levels."""
        self.put_many(keys, values)
        if self.shared is not None:
            expires_at = self._wall_clock() + self.ttl_s
            shared = self.shared
            items = [
                (shared.key(generation, k), encode_scores(v, expires_at)) for k, v in zip(keys, values, strict=True)
            ]
            await shared.set_many(items, self.ttl_s)

    # --- L1 ----------------------------------------------------------------------------------

    def get_many(self, keys: list[Key]) -> list[np.ndarray | None]:
        now = self._clock()
        found: list[np.ndarray | None] = []
        for key in keys:
            entry = self._rows.get(key)
            if entry is not None and entry[0] <= now:
                del self._rows[key]
                entry = None
            if entry is None:
                found.append(None)
            else:
                self._rows.move_to_end(key)
                found.append(entry[1])
        hits = sum(v is not None for v in found)
        self.hits += hits
        self.misses += len(found) - hits
        _count("memory", hits, len(found))
        return found

    def put_many(self, keys: list[Key], values: np.ndarray) -> None:
        expires = self._clock() + self.ttl_s
        for key, value in zip(keys, values, strict=True):
            self._insert(key, np.array(value, dtype=np.float64), expires)
        self._evict()

    def _insert(self, key: Key, value: np.ndarray, expires: float) -> None:
        self._rows[key] = (expires, value)
        self._rows.move_to_end(key)

    def _evict(self) -> None:
        while len(self._rows) > self.max_entries:
            self._rows.popitem(last=False)

    def clear(self) -> None:
        """L1 only: L2 moves on with the policy revision (see the module docstring)."""
        self._rows.clear()

    def stats(self) -> dict[str, float | int | dict[str, int]]:
        total = self.hits + self.misses
        stats: dict[str, float | int | dict[str, int]] = {
            "entries": len(self._rows),
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": round(self.hits / total, 4) if total else 0.0,
        }
        if self.shared is not None:
            stats["redis"] = {"hits": self.shared_hits, "misses": self.shared_misses, "errors": self.shared.errors}
        return stats


def _count(level: str, hits: int, rows: int) -> None:
    if hits:
        CACHE_REQUESTS.labels(level=level, result="hit").inc(hits)
    if hits < rows:
        CACHE_REQUESTS.labels(level=level, result="miss").inc(rows - hits)


def build_cache(settings: Settings) -> ResponseCache | None:
    """The response cache the settings ask for: none, L1 alone, or L1 in front of Redis."""
    if not settings.cache_enabled:
        return None
    shared = None
    if settings.cache_backend == "redis":
        shared = RedisScores(
            settings.cache_redis_url,
            # The version names of two model prefixes may coincide; their scores must not.
            namespace=f"{settings.cache_redis_key_prefix}:{settings.model_prefix}",
            timeout_s=settings.cache_redis_timeout_ms / 1000.0,
            backoff_s=settings.cache_redis_backoff_s,
        )
    return ResponseCache(settings.cache_max_entries, settings.cache_ttl_s, shared=shared)
