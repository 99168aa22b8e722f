"""Closed-loop OIP gRPC load: N channels, one call in flight on each, pre-serialised ModelInferRequests.

    .venv/bin/python -m benchmarks.grpc_load --target 127.0.0.1:8001 --requests reqs.bin \\
        --connections 64 --duration-s 15 --warmup-s 3

Run in a process of its own by benchmarks/online.py, so its CPU is not the orchestrator's. The
request bytes are sent as they are (no serialiser) and answers are not parsed (only their status
counts), which keeps the client's cost per call near grpc's own. ``--requests`` holds
length-prefixed (4 bytes, little endian) serialised requests, sent in turn. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from benchmarks.loadgen import percentile_ms

METHOD = "/inference.GRPCInferenceService/ModelInfer"
_LENGTH = struct.Struct("<I")


def pack(requests: list[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(r)) + r for r in requests)


def unpack(blob: bytes) -> list[bytes]:
    out, at = [], 0
    while at < len(blob):
        (n,) = _LENGTH.unpack_from(blob, at)
        out.append(blob[at + 4 : at + 4 + n])
        at += 4 + n
    return out


async def drive(target: str, requests: list[bytes], connections: int, duration_s: float, timeout_s: float) -> Any:
    # One channel per connection, each with its own subchannel pool: otherwise grpc shares one TCP
    # connection among all channels to the same target.
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(connections)
    ]
    latencies: list[float] = []
    codes: dict[str, int] = {}
    try:
        await asyncio.gather(*(ch.channel_ready() for ch in channels))
        stop_at = time.perf_counter() + duration_s

        async def loop(k: int, channel: grpc.aio.Channel) -> None:
            call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
            i = k
            while time.perf_counter() < stop_at:
                body = requests[i % len(requests)]
                i += connections
                started = time.perf_counter()
                try:
                    await call(body, timeout=timeout_s)
                except grpc.aio.AioRpcError as exc:
                    codes[exc.code().name] = codes.get(exc.code().name, 0) + 1
                    continue
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(loop(k, ch) for k, ch in enumerate(channels)))
        elapsed = time.perf_counter() - started
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))
    return latencies, codes, elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--requests", type=Path, required=True, help="length-prefixed serialised requests")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--duration-s", type=float, default=15.0)
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--timeout-s", type=float, default=30.0, help="deadline of one call")
    args = parser.parse_args(argv)
    requests = unpack(args.requests.read_bytes())
    if args.warmup_s > 0:
        asyncio.run(drive(args.target, requests, args.connections, args.warmup_s, args.timeout_s))
    cpu_started = time.process_time()
    latencies, codes, elapsed = asyncio.run(
        drive(args.target, requests, args.connections, args.duration_s, args.timeout_s)
    )
    cpu_s = time.process_time() - cpu_started
    print(
        json.dumps(
            {
                "ok": len(latencies),
                "errors": sum(codes.values()),
                "codes": codes,
                "duration_s": elapsed,
                "req_per_s": len(latencies) / elapsed if elapsed > 0 else 0.0,
                "p50_ms": percentile_ms(latencies, 50),
                "p99_ms": percentile_ms(latencies, 99),
                # Near 100 the client itself was the bottleneck (it has one core at most).
                "client_cpu_pct": 100.0 * cpu_s / elapsed if elapsed > 0 else 0.0,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
