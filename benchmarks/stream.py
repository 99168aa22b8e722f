"""fraud-stream on a local Redis, next to a bare consume -> produce -> ack loop measured in the same run.

    .venv/bin/python -m benchmarks.stream                          # needs `make models` and redis-server
    .venv/bin/python -m benchmarks.stream --rate 5000 --seconds 10 --messages 100000

One run starts a throwaway redis-server (AOF on) and real `fraud-stream worker` processes:
1. fixed rate: one worker, `--rate` messages/s for `--seconds`; end-to-end latency per message is
   the score's stream id minus the transaction's stream id (both appended by Redis: one clock, ms);
2. max throughput from a backlog: the consumers are started, paused (SIGSTOP), `--messages` are
   appended, and they are resumed (SIGCONT); events/s = messages / (resume -> last output entry),
   with 1 and 2 workers.
Each run is repeated with the bare loop in place of the workers: XREADGROUP COUNT n, then one pipeline of
an XADD per message (as many fields as a score entry) and one XACK; no decoding, no scoring, no Lua.
That loop is what Redis and redis-py cost on this machine at that moment, so the worker / bare ratio is
the number to compare across runs on shared, noisy machines. Writes benchmarks/results/stream.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import redis
from redis.utils import HIREDIS_AVAILABLE

from fraudserve.settings import Settings
from fraudserve.stream.local_redis import LocalRedis
from fraudserve.stream.producer import generated, produce
from fraudserve.stream.redis_broker import RedisStreams

RESULTS = Path(__file__).parent / "results" / "stream.json"


def ms(stream_id: str) -> int:
    return int(stream_id.split("-", 1)[0])


# A bare consumer's output entry: as many fields as a score entry, of similar sizes.
_BARE_FIELDS = {
    "txn_id": "gen-23-000000",
    "fraud_probability": "0.012345",
    "is_fraud": "0",
    "score_hgb": "0.012345",
    "score_logreg": "0.012345",
    "score_iforest": "0.412345",
    "threshold": "0.46",
    "model_version": "v20261201-000000-00000000",
    "consumer": "bare-0",
}


def bare_loop(url: str, settings: Settings, consumer: str, batch_size: int, ready: Event) -> None:
    """Consume -> produce -> ack with nothing in between: the ceiling Redis and redis-py set here."""
    client = redis.Redis.from_url(url, decode_responses=True)
    stream, group, output = settings.stream_input, settings.stream_group, settings.stream_output
    with contextlib.suppress(redis.ResponseError):  # BUSYGROUP: the other bare consumer created it
        client.xgroup_create(stream, group, id="0", mkstream=True)
    ready.set()
    while True:
        reply: Any = client.xreadgroup(group, consumer, {stream: ">"}, count=batch_size, block=1000)
        if not reply:
            continue
        entries = reply[0][1]
        pipe = client.pipeline(transaction=False)
        for mid, _ in entries:
            pipe.xadd(output, {"source_id": mid, **_BARE_FIELDS})  # type: ignore[arg-type]
        pipe.xack(stream, group, *[mid for mid, _ in entries])
        pipe.execute()


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _redis_cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class Scenario:
    """Streams of their own and N consumer processes (fraud-stream workers or bare loops), killed at the end."""

    def __init__(
        self, server: LocalRedis, name: str, n_workers: int, batch_size: int, logs: Path, *, bare: bool = False
    ) -> None:
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
        self.bare = bare
        self.logs = [logs / f"{name}-{i}.log" for i in range(n_workers)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.bare_procs: list[multiprocessing.process.BaseProcess] = []
        self.ready: list[Event] = []
        ctx = multiprocessing.get_context("spawn")
        for i, log in enumerate(self.logs):
            if bare:
                ready = ctx.Event()
                proc = ctx.Process(target=bare_loop, args=(server.url, self.settings, f"{name}-{i}", batch_size, ready))
                proc.start()
                self.bare_procs.append(proc)
                self.ready.append(ready)
                continue
            cmd = [sys.executable, "-m", "fraudserve.stream.cli", "worker", "--consumer", f"{name}-{i}"]
            cmd += ["--batch-size", str(batch_size), "--metrics-port", "0"]
            with log.open("wb") as out:
                self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs] + [p.pid for p in self.bare_procs if p.pid is not None]

    def wait_started(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        if self.bare:
            for ready in self.ready:
                if not ready.wait(timeout_s):
                    raise RuntimeError("a bare consumer did not start")
            return
        while not all("started" in log.read_text() for log in self.logs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise RuntimeError("workers did not start:\n" + "\n".join(log.read_text()[-2000:] for log in self.logs))
            time.sleep(0.1)
        time.sleep(0.5)  # past start-up: the first XREADGROUP is issued

    def signal(self, signum: int) -> None:
        for pid in self.pids:
            os.kill(pid, signum)

    def redis_ms(self) -> int:
        seconds, micros = self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def wait_scored(self, n: int, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while self.client.xlen(self.settings.stream_output) + self.client.xlen(self.settings.stream_dead_letter) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.client.xlen(self.settings.stream_output)} of {n} scored")
            time.sleep(0.02)

    def latencies_ms(self) -> np.ndarray:
        entries = self.client.xrange(self.settings.stream_output)
        return np.array([ms(out_id) - ms(f["source_id"]) for out_id, f in entries], dtype=np.float64)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
        for b in self.bare_procs:
            if b.is_alive():
                b.kill()
            b.join(timeout=10)
        self.client.close()


def fixed_rate(
    server: LocalRedis, args: argparse.Namespace, logs: Path, messages: Sequence[dict[str, str]], *, bare: bool
) -> dict[str, Any]:
    scenario = Scenario(server, "rate-bare" if bare else "rate", 1, args.batch_size, logs, bare=bare)
    try:
        scenario.wait_started()
        broker = RedisStreams.connect(scenario.settings, "bench")
        report = produce(broker, messages, rate_per_s=args.rate)
        broker.close()
        scenario.wait_scored(len(messages))
        lat = scenario.latencies_ms()
        out = scenario.client.xrange(scenario.settings.stream_output, count=1)
        last = scenario.client.xrevrange(scenario.settings.stream_output, count=1)
        span_s = (ms(last[0][0]) - ms(report.first_id or out[0][0])) / 1000.0
        return {
            "consumer": "bare loop" if bare else "fraud-stream worker",
            "workers": 1,
            "target_rate_per_s": args.rate,
            "produced_rate_per_s": round(report.rate_per_s, 1),
            "messages": len(messages),
            "events_per_s": round(len(lat) / span_s, 1),
            "latency_p50_ms": float(np.percentile(lat, 50)),
            "latency_p99_ms": float(np.percentile(lat, 99)),
            "latency_max_ms": float(lat.max()),
        }
    finally:
        scenario.close()


def max_throughput(
    server: LocalRedis,
    args: argparse.Namespace,
    n_workers: int,
    logs: Path,
    messages: Sequence[dict[str, str]],
    *,
    bare: bool,
) -> dict[str, Any]:
    name = f"max{n_workers}{'-bare' if bare else ''}"
    scenario = Scenario(server, name, n_workers, args.batch_size, logs, bare=bare)
    try:
        scenario.wait_started()
        # Paused while the backlog is appended, so the run measures draining it, not the producer.
        scenario.signal(signal.SIGSTOP)
        broker = RedisStreams.connect(scenario.settings, "bench")
        produce(broker, messages, chunk=2_000)
        broker.close()
        scenario.client.config_resetstat()
        consumers = [psutil.Process(pid) for pid in scenario.pids]
        cpu_before = sum(_cpu_s(c) for c in consumers), _redis_cpu_s(scenario.client)
        resumed_ms = scenario.redis_ms()
        scenario.signal(signal.SIGCONT)
        scenario.wait_scored(len(messages))
        cpu_after = sum(_cpu_s(c) for c in consumers), _redis_cpu_s(scenario.client)
        last = scenario.client.xrevrange(scenario.settings.stream_output, count=1)
        span_s = (ms(last[0][0]) - resumed_ms) / 1000.0
        per_worker: dict[str, int] = {}
        for _, f in scenario.client.xrange(scenario.settings.stream_output):
            per_worker[f["consumer"]] = per_worker.get(f["consumer"], 0) + 1
        stats = scenario.client.info("commandstats")
        return {
            "consumer": "bare loop" if bare else "fraud-stream worker",
            "workers": n_workers,
            "messages": len(messages),
            "events_per_s": round(len(messages) / span_s, 1),
            "drain_s": round(span_s, 3),
            # CPU per message moves far less with the machine's load than events/s does.
            "consumer_cpu_us_per_msg": round((cpu_after[0] - cpu_before[0]) / len(messages) * 1e6, 1),
            "redis_cpu_us_per_msg": round((cpu_after[1] - cpu_before[1]) / len(messages) * 1e6, 1),
            "per_worker": per_worker if not bare else {},
            "redis_usec_per_call": {
                k.removeprefix("cmdstat_"): v["usec_per_call"] for k, v in stats.items() if v["calls"] >= 100
            },
        }
    finally:
        scenario.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=5000.0, help="fixed produce rate, messages/s (5000)")
    p.add_argument("--seconds", type=float, default=10.0, help="duration of the fixed-rate run (10)")
    p.add_argument("--messages", type=int, default=100_000, help="backlog of each max-throughput run (100000)")
    p.add_argument("--batch-size", type=int, default=Settings().stream_batch_size, help="worker COUNT")
    args = p.parse_args(argv)

    load_before = os.getloadavg()
    # Generated before any clock starts: the producer only sends.
    paced = list(generated(int(args.rate * args.seconds), seed=17))
    backlog = list(generated(args.messages, seed=23))
    with tempfile.TemporaryDirectory(prefix="fraud-bench-stream-") as tmp, LocalRedis() as server:
        logs = Path(tmp)
        rates = [fixed_rate(server, args, logs, paced, bare=bare) for bare in (False, True)]
        maxes = []
        for n in (1, 2):
            worker = max_throughput(server, args, n, logs, backlog, bare=False)
            bare_run = max_throughput(server, args, n, logs, backlog, bare=True)
            worker["vs_bare"] = round(worker["events_per_s"] / bare_run["events_per_s"], 3)
            maxes += [worker, bare_run]
        version = redis.Redis.from_url(server.url).info("server")["redis_version"]

    result = {
        "machine": f"{os.cpu_count()} cores, shared with other jobs; {platform.platform()}",
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "redis": f"redis-server {version}, AOF on (appendonly yes, fsync everysec)",
        "hiredis": HIREDIS_AVAILABLE,
        "batch_size": args.batch_size,
        "fixed_rate": rates,
        "max_throughput": maxes,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print("| run | consumer | workers | events/s | vs bare | p50 ms | p99 ms | CPU us/msg: consumers + redis |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rates:
        print(
            f"| fixed rate {args.rate:.0f}/s | {r['consumer']} | 1 | {r['events_per_s']} | - |"
            f" {r['latency_p50_ms']:.0f} | {r['latency_p99_ms']:.0f} | - |"
        )
    for m in maxes:
        print(
            f"| backlog of {m['messages']:,} | {m['consumer']} | {m['workers']} | {m['events_per_s']} |"
            f" {m.get('vs_bare', '-')} | - | - | {m['consumer_cpu_us_per_msg']} + {m['redis_cpu_us_per_msg']} |"
        )
    print(f"load average before {result['load_avg_before']}, after {result['load_avg_after']}; written {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
