"""The token bucket: burst, refill, per-client isolation, bounded memory."""

from __future__ import annotations

import pytest

from fraudserve.errors import RateLimited
from fraudserve.security.auth import Principal
from fraudserve.security.ratelimit import TokenBucketLimiter, client_id


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_sustained_rate() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(rate_per_s=2.0, burst=3, clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 0
    clock.now += 60
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]  # refills up to the burst only
    assert limiter.acquire("a") > 0


def test_clients_have_their_own_buckets_and_check_raises_with_retry_after() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(rate_per_s=0.25, burst=1, clock=clock)
    limiter.check("a")
    limiter.check("b")
    with pytest.raises(RateLimited) as info:
        limiter.check("a")
    assert info.value.retry_after_s == pytest.approx(4.0)
    assert info.value.to_dict()["error"] == "rate_limited"
    assert int(info.value.http_status) == 429 and info.value.grpc_code == "RESOURCE_EXHAUSTED"


def test_bucket_table_is_bounded() -> None:
    limiter = TokenBucketLimiter(rate_per_s=1.0, burst=1, max_clients=100, clock=Clock())
    for i in range(1000):
        limiter.acquire(f"ip:{i}")
    assert len(limiter._buckets) == 100


def test_client_identity_prefers_the_key() -> None:
    assert client_id(Principal("abc", admin=False), "10.0.0.1") == "key:abc"
    assert client_id(None, "10.0.0.1") == "ip:10.0.0.1"
    assert client_id(None, None) == "ip:unknown"


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_bad_parameters(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucketLimiter(rate, burst)
