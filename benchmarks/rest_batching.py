"""Single-row REST throughput and latency, batching on vs off, and the raw in-process model rate.

    make bench-batching             # or: .venv/bin/python -m benchmarks.rest_batching --help

Serves the bundle (real `bentoml serve`, models from $BENTOML_HOME) once with adaptive batching
and once without, drives each with the same seeded single-row requests at a fixed concurrency,
and measures the ensemble's in-process predict rate in the same run. Writes
benchmarks/results/rest_batching.json and prints a table. Compare ratios, not absolute numbers:
these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from fraudserve.launcher import BundleServer
from fraudserve.local import load_local
from models.transactions import generate_transactions

RESULTS = Path(__file__).parent / "results" / "rest_batching.json"


async def drive(url: str, rows: list[dict[str, Any]], concurrency: int, duration_s: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    statuses: dict[int, int] = {}
    stop_at = time.perf_counter() + duration_s
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def user(offset: int) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < stop_at:
                body = {"transactions": rows[i % len(rows)]}
                i += concurrency
                started = time.perf_counter()
                try:
                    async with session.post(url + "/predict", json=body) as response:
                        await response.read()
                        statuses[response.status] = statuses.get(response.status, 0) + 1
                        if response.status != 200:
                            errors += 1
                            continue
                except aiohttp.ClientError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(user(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "requests": len(latencies) + errors,
        "errors": errors,
        "req_per_s": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(ordered) if ordered else float("nan"),
        "p99_ms": 1000 * ordered[int(0.99 * (len(ordered) - 1))] if ordered else float("nan"),
        "statuses": {str(k): v for k, v in statuses.items()},  # type: ignore[dict-item]
    }


def serve_and_drive(batching: bool, rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    env = {
        # Both batchers: the entry worker's (one runner call per batch) and the runners' own.
        "FRAUD_ENTRY_BATCHING_ENABLED": str(batching).lower(),
        "FRAUD_BATCHING_ENABLED": str(batching).lower(),
        "FRAUD_GRPC_ENABLED": "false",
        "FRAUD_API_WORKERS": str(args.api_workers),
    }
    with BundleServer(env=env) as server:
        asyncio.run(drive(server.url, rows, args.concurrency, args.warmup_s))
        result = asyncio.run(drive(server.url, rows, args.concurrency, args.duration_s))
        batch_rows = _mean_batch_rows(server.metrics())
    return {**result, "mean_runner_batch_rows": batch_rows}


def raw_rates(rows: list[dict[str, Any]], seconds: float = 3.0) -> dict[str, float]:
    spec, scorer = load_local()
    matrix = spec.schema.encode_records(rows)

    def ensemble(x: np.ndarray) -> np.ndarray:
        return spec.combine(scorer.score_all(spec, x))

    n = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        ensemble(matrix[n % len(matrix) : n % len(matrix) + 1])
        n += 1
    single = n / (time.perf_counter() - started)
    reps = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        ensemble(matrix)
        reps += 1
    bulk = reps * len(matrix) / (time.perf_counter() - started)
    return {"single_row_calls_per_s": single, "bulk_rows_per_s": bulk}


def _mean_batch_rows(metrics: str) -> float:
    total = count = 0.0
    for line in metrics.splitlines():
        if 'path="batched"' in line or 'path="unbatched"' in line:
            if line.startswith("fraud_runner_batch_rows_sum"):
                total += float(line.rsplit(" ", 1)[1])
            elif line.startswith("fraud_runner_batch_rows_count"):
                count += float(line.rsplit(" ", 1)[1])
    return total / count if count else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--rows", type=int, default=2_000, help="distinct seeded payload rows")
    parser.add_argument("--api-workers", type=int, default=1, help="entry-service workers (FRAUD_API_WORKERS)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    rows = generate_transactions(args.rows, seed=2024).drop(columns="is_fraud").to_dict("records")
    runs = {"batching on": serve_and_drive(True, rows, args), "batching off": serve_and_drive(False, rows, args)}
    raw = raw_rates(rows[:1024])

    on, off = runs["batching on"], runs["batching off"]
    header = f"{'mode':<14}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'rows/batch':>12}"
    print(
        f"\nsingle-row POST /predict, {args.concurrency} concurrent, {args.duration_s:.0f}s,"
        f" {args.api_workers} API worker(s), {os.cpu_count()} cores"
    )
    print(header)
    for name, r in runs.items():
        print(
            f"{name:<14}{r['req_per_s']:>9.1f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
            f"{r['errors']:>8d}{r['mean_runner_batch_rows']:>12.1f}"
        )
    print(f"{'raw in-proc':<14}{raw['single_row_calls_per_s']:>9.1f}   (1-row ensemble calls/s, no server)")
    print(f"{'raw in-proc':<14}{raw['bulk_rows_per_s']:>9.0f}   (rows/s, 1024-row ensemble calls)")
    speedup = on["req_per_s"] / off["req_per_s"]
    print(f"\nbatched / unbatched throughput: {speedup:.2f}x; p99 ratio on/off: {on['p99_ms'] / off['p99_ms']:.2f}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "node": platform.node()},
        "concurrency": args.concurrency,
        "api_workers": args.api_workers,
        "duration_s": args.duration_s,
        "runs": runs,
        "raw": raw,
        "speedup": speedup,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
