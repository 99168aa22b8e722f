"""Command-line / environment options of the locustfile, and what each user derives from them."""

from __future__ import annotations

import itertools
import os
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from locust.env import Environment

from loadtests.payloads import RequestMix, TransactionPool
from loadtests.slo import P99_BUDGET_MS, SloBudget

_user_ids = itertools.count()


def add_arguments(parser: Any) -> None:
    """Registered on ``events.init_command_line_parser``; each option also reads the LOCUST_* variable named."""
    group = parser.add_argument_group("fraud bundle")
    group.add_argument(
        "--slo-p99-ms",
        type=float,
        env_var="LOCUST_SLO_P99_MS",
        default=P99_BUDGET_MS,
        help="Fail the run (exit 1) when the p99 of all requests exceeds this (ms); default: P99_BUDGET_MS of slo.py.",
    )
    group.add_argument(
        "--slo-max-error-rate",
        type=float,
        env_var="LOCUST_SLO_MAX_ERROR_RATE",
        default=0.001,
        help="Fail the run (exit 1) when failures/requests exceeds this (0.001 = 0.1%%).",
    )
    group.add_argument(
        "--payload-seed",
        type=int,
        env_var="LOCUST_PAYLOAD_SEED",
        default=7,
        help="Seed of the generated transactions and of each user's draws.",
    )
    group.add_argument(
        "--payload-pool",
        type=int,
        env_var="LOCUST_PAYLOAD_POOL",
        default=2_000,
        help="Transactions generated once per process and drawn from.",
    )
    group.add_argument(
        "--single-row-share",
        type=float,
        env_var="LOCUST_SINGLE_ROW_SHARE",
        default=0.8,
        help="Share of requests carrying one transaction; the rest carry --multi-rows.",
    )
    group.add_argument(
        "--multi-rows",
        env_var="LOCUST_MULTI_ROWS",
        default="8,32",
        help="Row counts of multi-row requests, comma-separated (drawn uniformly).",
    )
    group.add_argument(
        "--grpc-target",
        env_var="LOCUST_GRPC_TARGET",
        default="",
        help="host:port of the OIP gRPC server; default: host of --host, port FRAUD_GRPC_PORT or 8001.",
    )
    group.add_argument(
        "--request-timeout-s",
        type=float,
        env_var="LOCUST_REQUEST_TIMEOUT_S",
        default=30.0,
        help="Client timeout of one gRPC call.",
    )


def budget_from(options: Any) -> SloBudget:
    return SloBudget(max_error_rate=options.slo_max_error_rate, p99_ms=options.slo_p99_ms)


def grpc_target(options: Any) -> str:
    if options.grpc_target:
        return str(options.grpc_target)
    host = urlsplit(options.host or "http://127.0.0.1").hostname or "127.0.0.1"
    return f"{host}:{os.environ.get('FRAUD_GRPC_PORT', '8001')}"


@lru_cache(maxsize=4)
def _pool(size: int, seed: int) -> TransactionPool:
    return TransactionPool(size=size, seed=seed)


@dataclass
class UserSetup:
    """A user's payload source (shared seeded pool, own seeded draws) and transport settings."""

    pool: TransactionPool
    mix: RequestMix
    rng: random.Random
    grpc_target: str
    timeout_s: float

    @classmethod
    def from_environment(cls, environment: Environment) -> UserSetup:
        options = environment.parsed_options
        if options is None:  # a library run (no CLI): defaults, as the parser would give them
            raise RuntimeError("the fraud load test users need locust's parsed options (run them through locust)")
        return cls(
            pool=_pool(options.payload_pool, options.payload_seed),
            mix=RequestMix.parse(options.single_row_share, options.multi_rows),
            rng=random.Random(options.payload_seed * 100_003 + next(_user_ids)),
            grpc_target=grpc_target(options),
            timeout_s=options.request_timeout_s,
        )

    def draw(self) -> list[dict[str, Any]]:
        return self.pool.draw(self.rng, self.mix)
