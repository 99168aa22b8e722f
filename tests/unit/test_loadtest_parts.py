"""Load-test building blocks without a server: seeded payloads, the request mix, the SLO verdict."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import pytest

from loadtests.payloads import RequestMix, TransactionPool, oip_columns, rest_body
from loadtests.slo import SloBudget, evaluate
from models.transactions import TRANSACTION_SCHEMA


# Importing locust here would monkey-patch the whole pytest process (gevent): the real StatsEntry is
# exercised by tests/integration/test_loadtest_rest.py; this stands in for its totals.
@dataclass
class Totals:
    latencies_ms: list[float] = field(default_factory=list)
    num_failures: int = 0

    @property
    def num_requests(self) -> int:
        return len(self.latencies_ms) + self.num_failures

    def get_response_time_percentile(self, percent: float) -> float:
        return float(np.percentile(self.latencies_ms, percent * 100)) if self.latencies_ms else 0.0


def stats_with(latencies_ms: list[float], failures: int) -> Totals:
    return Totals(latencies_ms, failures)


def test_pool_is_seeded_and_schema_shaped() -> None:
    a, b, c = TransactionPool(200, seed=3), TransactionPool(200, seed=3), TransactionPool(200, seed=4)
    assert a.records == b.records
    assert a.records != c.records
    names = [f.name for f in TRANSACTION_SCHEMA.features]
    assert all(list(record) == names for record in a.records)
    TRANSACTION_SCHEMA.encode_records(a.records)  # raises InvalidInput on anything the server would reject


def test_draws_follow_the_mix() -> None:
    pool = TransactionPool(300, seed=3)
    mix = RequestMix(single_row_share=0.7, multi_rows=(8, 32))
    rng = random.Random(5)
    sizes = [len(pool.draw(rng, mix)) for _ in range(2_000)]
    assert set(sizes) == {1, 8, 32}
    assert 0.65 < sizes.count(1) / len(sizes) < 0.75
    assert [len(pool.draw(random.Random(9), mix)) for _ in range(5)] == [
        len(pool.draw(random.Random(9), mix)) for _ in range(5)
    ]


@pytest.mark.parametrize(
    ("share", "rows", "message"),
    [(1.5, "8", "single_row_share"), (0.5, "", "multi_rows"), (0.5, "1", "multi_rows"), (0.5, "8,x", "integers")],
)
def test_bad_mix_names_the_option(share: float, rows: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RequestMix.parse(share, rows)


def test_rest_body_single_object_or_list() -> None:
    records = TransactionPool(10, seed=1).records
    assert rest_body(records[:1]) == {"transactions": records[0]}
    assert rest_body(records[:3]) == {"transactions": records[:3]}


def test_oip_columns_are_typed_per_feature_kind() -> None:
    records = TransactionPool(10, seed=1).records[:4]
    columns = oip_columns(records)
    assert list(columns) == [f.name for f in TRANSACTION_SCHEMA.features]
    assert columns["amount"].dtype == np.float64 and columns["hour"].dtype == np.float64
    assert columns["card_present"].dtype == np.bool_
    assert columns["merchant_category"].tolist() == [r["merchant_category"].encode() for r in records]
    assert all(column.shape == (4,) for column in columns.values())


def test_slo_met_within_budgets() -> None:
    stats = stats_with([10.0] * 2_000, failures=1)  # 0.05 % errors
    verdict = evaluate(stats, SloBudget(max_error_rate=0.001, p99_ms=50))
    assert verdict.ok, verdict.summary()
    assert verdict.requests == 2_001 and verdict.failures == 1


def test_slo_missed_on_errors_latency_silence_and_bugs() -> None:
    budget = SloBudget(max_error_rate=0.001, p99_ms=50)
    errors = evaluate(stats_with([10.0] * 500, failures=5), budget)
    assert not errors.ok and "error rate" in errors.summary()
    slow = evaluate(stats_with([10.0] * 90 + [400.0] * 10, failures=0), budget)
    assert not slow.ok and "p99" in slow.summary() and slow.p99_ms >= 400
    assert not evaluate(Totals(), budget).ok
    assert not evaluate(stats_with([10.0] * 100, failures=0), budget, user_exceptions=1).ok


def test_budget_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_error_rate"):
        SloBudget(max_error_rate=2.0)
    with pytest.raises(ValueError, match="p99_ms"):
        SloBudget(p99_ms=0)
