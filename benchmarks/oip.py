"""Single-row throughput of REST /predict vs OIP gRPC (tritonclient) on a freshly started bundle.

    .venv/bin/python -m benchmarks.oip --requests 1500 --concurrency 64

A dev tool (needs tritonclient from requirements-dev.txt); the server runs in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx
import numpy as np

from fraudserve.launcher import BundleServer
from models.transactions import TRANSACTION_SCHEMA, generate_transactions

_NUMPY = {"float": np.float64, "int": np.int64, "bool": np.bool_, "category": np.object_}
_DATATYPE = {"float": "FP64", "int": "INT64", "bool": "BOOL", "category": "BYTES"}


Result = tuple[float, float, int]  # answered req/s, p99 seconds, failed requests


async def _drive(call: Callable[[int], Awaitable[None]], requests: int, concurrency: int) -> Result:
    slots = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    failed = 0

    async def one(i: int) -> None:
        nonlocal failed
        async with slots:
            started = time.perf_counter()
            try:
                await call(i)
            except Exception:  # noqa: BLE001 - shed or failed requests are counted, not fatal
                failed += 1
                return
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(requests)))
    elapsed = time.perf_counter() - started
    p99 = float(np.percentile(latencies, 99)) if latencies else float("nan")
    return len(latencies) / elapsed, p99, failed


async def _bench(server: BundleServer, requests: int, concurrency: int) -> dict[str, Result]:
    import tritonclient.grpc.aio as tgrpc

    # Different rows per transport: the core may cache scores of rows it has seen.
    rows = generate_transactions(requests, seed=5).drop(columns="is_fraud").to_dict("records")
    grpc_rows = generate_transactions(requests, seed=6).drop(columns="is_fraud").to_dict("records")
    results = {}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as http:

        async def rest(i: int) -> None:
            (await http.post("/predict", json={"transactions": rows[i]})).raise_for_status()

        results["REST /predict"] = await _drive(rest, requests, concurrency)

    client = tgrpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")

    async def grpc_infer(i: int) -> None:
        inputs = []
        for f in TRANSACTION_SCHEMA.features:
            tensor = tgrpc.InferInput(f.name, [1], _DATATYPE[f.kind])
            tensor.set_data_from_numpy(np.array([grpc_rows[i][f.name]], dtype=_NUMPY[f.kind]))
            inputs.append(tensor)
        await client.infer("fraud_ensemble", inputs)

    try:
        results["OIP gRPC ModelInfer"] = await _drive(grpc_infer, requests, concurrency)
    finally:
        await client.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    with BundleServer() as server:
        results = asyncio.run(_bench(server, args.requests, args.concurrency))
    print(f"{args.requests} single-row requests per transport, {args.concurrency} concurrent")
    print("| transport | answered req/s | p99 ms | failed |")
    print("|---|---|---|---|")
    for name, (rate, p99, failed) in results.items():
        print(f"| {name} | {rate:.0f} | {p99 * 1000:.0f} | {failed} |")


if __name__ == "__main__":
    main()
