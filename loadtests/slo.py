"""Service-level objectives of a load test run: the budgets and the verdict on a run's totals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# The p99 budget of `make loadtest` (--slo-p99-ms / LOCUST_SLO_P99_MS default), in one place: the users' SLO.
# Measured 2026-12-02: 16 users against the local bundle and the container on 2 cores (Locust on the same cores)
# held p99 26-33 ms (README "Load tests"); the release before the in-process members needed 260-300 ms.
P99_BUDGET_MS = 50.0
# The budget of the short Locust smoke runs in the integration tests: the same path on a CI machine that is busier
# (a few seconds of run, a cold server, one API worker, pytest on the same cores), so far above the default; it still
# fails a path as slow as the release before issue 16 (p99 ~1 s).
SMOKE_P99_BUDGET_MS = 1_000.0


class RunTotals(Protocol):
    """What the verdict needs of locust's aggregated ``StatsEntry`` (``environment.stats.total``)."""

    num_requests: int
    num_failures: int

    def get_response_time_percentile(self, percent: float) -> float: ...


@dataclass(frozen=True)
class SloBudget:
    max_error_rate: float = 0.001
    p99_ms: float = P99_BUDGET_MS

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise ValueError(f"max_error_rate must be within [0, 1], got {self.max_error_rate}")
        if self.p99_ms <= 0:
            raise ValueError(f"p99_ms must be positive, got {self.p99_ms}")


@dataclass(frozen=True)
class SloVerdict:
    requests: int
    failures: int
    error_rate: float
    p99_ms: float
    violations: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        head = (
            f"SLO {'met' if self.ok else 'MISSED'}: {self.requests} requests, {self.failures} failures"
            f" ({self.error_rate:.3%}), p99 {self.p99_ms:.0f} ms"
        )
        return "\n".join([head, *(f"  - {v}" for v in self.violations)])


def evaluate(totals: RunTotals, budget: SloBudget, *, user_exceptions: int = 0) -> SloVerdict:
    """The verdict on a run: every budget it exceeded, in words."""
    requests, failures = totals.num_requests, totals.num_failures
    error_rate = failures / requests if requests else 0.0
    p99 = float(totals.get_response_time_percentile(0.99) or 0.0) if requests else 0.0
    violations = []
    if requests == 0:
        violations.append("no request was made")
    if error_rate > budget.max_error_rate:
        violations.append(f"error rate {error_rate:.3%} > budget {budget.max_error_rate:.3%}")
    if p99 > budget.p99_ms:
        violations.append(f"p99 {p99:.0f} ms > budget {budget.p99_ms:.0f} ms")
    if user_exceptions:
        violations.append(f"{user_exceptions} exception(s) in the load test's own code")
    return SloVerdict(requests, failures, error_rate, p99, tuple(violations))
