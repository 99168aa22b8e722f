"""Open-loop HTTP load at a fixed offered rate: requests leave on a schedule, whether or not answers came back.

    .venv/bin/python -m benchmarks.openloop --url http://127.0.0.1:3000/predict --bodies bodies.json \\
        --rate 500 --duration-s 30 --warmup-s 3

Neither wrk nor hey can do this: both are closed loops (hey -q only paces each of its workers, and
a worker still waits for its answer), so a slow server slows the load down and hides its queueing
delay. Here request i is due at start + i / rate; its latency is measured from when it was due,
not from when it left, so time spent waiting for a free connection counts (no coordinated
omission). In-flight requests are capped (--max-inflight): past the cap a request waits, and that
wait is in its latency too. Run in a process of its own by benchmarks/online.py. Prints one JSON
line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.loadgen import percentile_ms


async def drive(
    url: str, bodies: list[bytes], rate: float, duration_s: float, max_inflight: int, timeout_s: float
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors = 0
    max_lag = 0.0
    total = int(rate * duration_s)
    slots = asyncio.Semaphore(max_inflight)
    connector = aiohttp.TCPConnector(limit=max_inflight)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:

        async def one(i: int, due: float) -> None:
            nonlocal errors
            try:
                async with slots, session.post(url, data=bodies[i % len(bodies)], headers=headers) as response:
                    await response.read()
                    statuses[str(response.status)] = statuses.get(str(response.status), 0) + 1
                    if response.status != 200:
                        errors += 1
                        return
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
                return
            latencies.append(time.perf_counter() - due)

        tasks = []
        start = time.perf_counter()
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                max_lag = max(max_lag, -delay)
            tasks.append(asyncio.create_task(one(i, due)))
        sent_s = time.perf_counter() - start
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return {
        "offered_rate": rate,
        "sent": total,
        "sent_rate": total / sent_s if sent_s > 0 else 0.0,
        "ok": len(latencies),
        "errors": errors,
        "statuses": statuses,
        "duration_s": elapsed,
        # Until the last answer, not over the offering window: a server that falls behind and answers
        # late has not served the offered rate.
        "req_per_s": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile_ms(latencies, 50),
        "p99_ms": percentile_ms(latencies, 99),
        # How far the sender itself fell behind its schedule; large values mean the client was starved of CPU.
        "max_send_lag_ms": 1000.0 * max_lag,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--bodies", type=Path, required=True, help="JSON list of request bodies (strings)")
    parser.add_argument("--rate", type=float, default=500.0, help="offered requests/s")
    parser.add_argument("--duration-s", type=float, default=30.0)
    parser.add_argument("--warmup-s", type=float, default=3.0, help="at the same rate, not measured")
    parser.add_argument("--max-inflight", type=int, default=1024)
    parser.add_argument("--timeout-s", type=float, default=30.0)
    args = parser.parse_args(argv)
    bodies = [b.encode() for b in json.loads(args.bodies.read_text())]
    if args.warmup_s > 0:
        asyncio.run(drive(args.url, bodies, args.rate, args.warmup_s, args.max_inflight, args.timeout_s))
    cpu_started = time.process_time()
    result = asyncio.run(drive(args.url, bodies, args.rate, args.duration_s, args.max_inflight, args.timeout_s))
    result["client_cpu_pct"] = 100.0 * (time.process_time() - cpu_started) / result["duration_s"]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
