"""fraud-stream on a local Redis: end-to-end latency at a fixed rate, max throughput with 1 and 2 workers.

    .venv/bin/python -m benchmarks.stream                          # needs `make models` and redis-server
    .venv/bin/python -m benchmarks.stream --rate 1000 --seconds 20 --messages 40000

One run starts a throwaway redis-server (AOF on) and real `fraud-stream worker` processes:
1. fixed rate: one worker, `--rate` messages/s for `--seconds`; end-to-end latency per message is
   the score's stream id minus the transaction's stream id (both appended by Redis: one clock, ms);
2. max throughput: `--messages` appended at once, drained by 1 then 2 workers (first append -> last
   score). Writes benchmarks/results/stream.json and prints a table. Shared, noisy machines:
   compare numbers within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis

from fraudserve.settings import Settings
from fraudserve.stream.local_redis import LocalRedis
from fraudserve.stream.producer import generated, produce
from fraudserve.stream.redis_broker import RedisStreams

RESULTS = Path(__file__).parent / "results" / "stream.json"


def ms(stream_id: str) -> int:
    return int(stream_id.split("-", 1)[0])


class Scenario:
    """Streams of their own and N worker processes, all killed at the end."""

    def __init__(self, server: LocalRedis, name: str, n_workers: int, batch_size: int, logs: Path) -> None:
        self.env = {**os.environ, "FRAUD_REDIS_URL": server.url}
        for kind in ("input", "output", "alerts", "dead_letter"):
            self.env[f"FRAUD_STREAM_{kind.upper()}"] = f"bench:{name}:{kind}"
        self.settings = Settings(
            **{
                k.removeprefix("FRAUD_").lower(): v
                for k, v in self.env.items()
                if k.startswith("FRAUD_STREAM_") or k == "FRAUD_REDIS_URL"
            }
        )  # type: ignore[arg-type]
        self.client = server.client()
        self.logs = [logs / f"{name}-{i}.log" for i in range(n_workers)]
        self.procs: list[subprocess.Popen[bytes]] = []
        for i, log in enumerate(self.logs):
            cmd = [sys.executable, "-m", "fraudserve.stream.cli", "worker", "--consumer", f"{name}-{i}"]
            cmd += ["--batch-size", str(batch_size), "--metrics-port", "0"]
            with log.open("wb") as out:
                self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT))

    def wait_started(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not all("started" in log.read_text() for log in self.logs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise RuntimeError("workers did not start:\n" + "\n".join(log.read_text()[-2000:] for log in self.logs))
            time.sleep(0.1)

    def wait_scored(self, n: int, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while self.client.xlen(self.settings.stream_output) + self.client.xlen(self.settings.stream_dead_letter) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.client.xlen(self.settings.stream_output)} of {n} scored")
            time.sleep(0.05)

    def latencies_ms(self) -> np.ndarray:
        entries = self.client.xrange(self.settings.stream_output)
        return np.array([ms(out_id) - ms(f["source_id"]) for out_id, f in entries], dtype=np.float64)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
        self.client.close()


def fixed_rate(server: LocalRedis, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    scenario = Scenario(server, "rate", 1, args.batch_size, logs)
    try:
        scenario.wait_started()
        n = int(args.rate * args.seconds)
        broker = RedisStreams.connect(scenario.settings, "bench")
        report = produce(broker, generated(n, seed=17), rate_per_s=args.rate)
        broker.close()
        scenario.wait_scored(n)
        lat = scenario.latencies_ms()
        out = scenario.client.xrange(scenario.settings.stream_output)
        span_s = (ms(out[-1][0]) - ms(report.first_id or out[0][0])) / 1000.0
        return {
            "workers": 1,
            "target_rate_per_s": args.rate,
            "produced_rate_per_s": round(report.rate_per_s, 1),
            "messages": n,
            "events_per_s": round(len(out) / span_s, 1),
            "latency_p50_ms": float(np.percentile(lat, 50)),
            "latency_p99_ms": float(np.percentile(lat, 99)),
            "latency_max_ms": float(lat.max()),
        }
    finally:
        scenario.close()


def max_throughput(server: LocalRedis, args: argparse.Namespace, n_workers: int, logs: Path) -> dict[str, Any]:
    scenario = Scenario(server, f"max{n_workers}", n_workers, args.batch_size, logs)
    try:
        scenario.wait_started()
        broker = RedisStreams.connect(scenario.settings, "bench")
        produced: list[Any] = []
        # Appended from a thread while the workers drain, as a real producer would.
        feeder = threading.Thread(target=lambda: produced.append(produce(broker, generated(args.messages, seed=23))))
        feeder.start()
        scenario.wait_scored(args.messages)
        feeder.join()
        broker.close()
        out = scenario.client.xrange(scenario.settings.stream_output)
        span_s = (ms(out[-1][0]) - ms(produced[0].first_id)) / 1000.0
        lat = scenario.latencies_ms()
        per_worker: dict[str, int] = {}
        for _, f in out:
            per_worker[f["consumer"]] = per_worker.get(f["consumer"], 0) + 1
        return {
            "workers": n_workers,
            "messages": args.messages,
            "events_per_s": round(len(out) / span_s, 1),
            "latency_p99_ms_backlogged": float(np.percentile(lat, 99)),
            "per_worker": per_worker,
        }
    finally:
        scenario.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=500.0, help="fixed produce rate, messages/s (500)")
    p.add_argument("--seconds", type=float, default=10.0, help="duration of the fixed-rate run (10)")
    p.add_argument("--messages", type=int, default=20_000, help="messages of each max-throughput run (20000)")
    p.add_argument("--batch-size", type=int, default=Settings().stream_batch_size, help="worker COUNT")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="fraud-bench-stream-") as tmp, LocalRedis() as server:
        logs = Path(tmp)
        rate = fixed_rate(server, args, logs)
        maxes = [max_throughput(server, args, n, logs) for n in (1, 2)]
        version = redis.Redis.from_url(server.url).info("server")["redis_version"]

    result = {
        "machine": f"{os.cpu_count()} cores, shared with other jobs; {platform.platform()}",
        "redis": f"redis-server {version}, AOF on (appendonly yes, fsync everysec)",
        "batch_size": args.batch_size,
        "fixed_rate": rate,
        "max_throughput": maxes,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print("| run | workers | events/s | p50 ms | p99 ms |\n|---|---|---|---|---|")
    print(
        f"| fixed rate {args.rate:.0f}/s | 1 | {rate['events_per_s']} | {rate['latency_p50_ms']:.0f}"
        f" | {rate['latency_p99_ms']:.0f} |"
    )
    for m in maxes:
        print(
            f"| max throughput | {m['workers']} | {m['events_per_s']} | - |"
            f" {m['latency_p99_ms_backlogged']:.0f} (backlogged) |"
        )
    print(f"written {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
