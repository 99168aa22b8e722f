"""Response cache: the member scores of a row, keyed by model version and the encoded row.

In-process LRU with a TTL, per API worker. The key is the concrete version plus the bytes of
the row as the schema encodes it (field order, categories and types fixed by the schema), so
two JSON bodies that differ only in key order or number formatting share an entry. Only the
member scores are kept; combine and threshold run on every request, so a threshold setting
never serves stale decisions. Cleared on every policy or version change; shadow scoring
neither reads nor writes it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from fraudserve.rollout.metrics import CACHE_REQUESTS


class ResponseCache:
    def __init__(self, max_entries: int, ttl_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._rows: OrderedDict[tuple[str, bytes], tuple[float, np.ndarray]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    @staticmethod
    def keys(version: str, features: np.ndarray) -> list[tuple[str, bytes]]:
        # + 0.0 turns -0.0 into 0.0: equal values, equal bytes.
        rows = np.ascontiguousarray(np.asarray(features, dtype=np.float64) + 0.0)
        return [(version, row.tobytes()) for row in rows]

    def get_many(self, keys: list[tuple[str, bytes]]) -> list[np.ndarray | None]:
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
        if hits:
            CACHE_REQUESTS.labels(result="hit").inc(hits)
        if hits < len(found):
            CACHE_REQUESTS.labels(result="miss").inc(len(found) - hits)
        return found

    def put_many(self, keys: list[tuple[str, bytes]], values: np.ndarray) -> None:
        expires = self._clock() + self.ttl_s
        for key, value in zip(keys, values, strict=True):
            self._rows[key] = (expires, np.array(value, dtype=np.float64))
            self._rows.move_to_end(key)
        while len(self._rows) > self.max_entries:
            self._rows.popitem(last=False)

    def clear(self) -> None:
        self._rows.clear()

    def stats(self) -> dict[str, float | int]:
        total = self.hits + self.misses
        return {
            "entries": len(self._rows),
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": round(self.hits / total, 4) if total else 0.0,
        }
