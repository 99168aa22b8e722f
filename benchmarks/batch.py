"""fraud-batch local engine: rows/s and peak memory at 1M and 10M rows vs the raw model rate.

    .venv/bin/python -m benchmarks.batch                     # 1M and 10M rows (needs `make models`)
    .venv/bin/python -m benchmarks.batch --rows 200000 1000000

Generates seeded Parquet inputs (in 1M-row pieces, so generation itself stays small), runs
`fraud-batch` on each in a child process and reads the child's peak RSS (ru_maxrss from wait4),
and measures in the same run the raw in-process rate: the same models' member scores + combine
on a preloaded, already-encoded matrix (no I/O, no validation). Writes
benchmarks/results/batch.json and prints a table. The target: the engine reaches >= 90% of the
raw rate and its peak memory does not grow with the input size. These machines are shared and
noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from fraudserve.features import encode_frame
from fraudserve.local import load_local
from fraudserve.settings import Settings
from models.transactions import generate_transactions

RESULTS = Path(__file__).parent / "results" / "batch.json"
PIECE_ROWS = 1_000_000


def generate(path: Path, rows: int) -> None:
    writer: pq.ParquetWriter | None = None
    try:
        for piece, start in enumerate(range(0, rows, PIECE_ROWS)):
            frame = generate_transactions(min(PIECE_ROWS, rows - start), seed=1000 + piece).drop(columns="is_fraud")
            table = pa.Table.from_pandas(frame, preserve_index=False)
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table, row_group_size=100_000)
    finally:
        if writer is not None:
            writer.close()


def run_engine(source: Path, output: Path, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, "-m", "fraudserve.batch.cli", str(source), str(output), "--overwrite", "-q"]
    cmd += ["--chunk-rows", str(args.chunk_rows), "--workers", str(args.workers), "--model-version", args.model_version]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()  # type: ignore[union-attr]
    if proc.returncode != 0:
        raise SystemExit(f"fraud-batch failed ({proc.returncode}):\n{out}\n{err}")
    summary = json.loads((output / "_summary.json").read_text())
    return {
        "wall_s": round(elapsed, 2),
        "scoring_s": summary["duration_s"],
        "rows_per_s": summary["rows_per_s"],
        "rows_per_s_wall": round(summary["rows_in"] / elapsed, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
    }


def raw_rate(args: argparse.Namespace, rows: int = 1_000_000) -> dict[str, float]:
    """Best of: one call with the libraries' own threading, and 2 threads x 1 BLAS/OpenMP thread."""
    from concurrent.futures import ThreadPoolExecutor

    spec, scorer = load_local(Settings(model_version=args.model_version))
    matrix = encode_frame(spec.schema, generate_transactions(rows, seed=999).drop(columns="is_fraud")).matrix

    def score(x: np.ndarray) -> np.ndarray:
        return spec.combine(scorer.score_all(spec, x))

    score(matrix[:10_000])
    started = time.perf_counter()
    score(matrix)
    single_call = rows / (time.perf_counter() - started)
    parts = np.array_split(matrix, max(1, rows // args.chunk_rows))
    with threadpool_limits(limits=1), ThreadPoolExecutor(args.workers) as pool:
        started = time.perf_counter()
        list(pool.map(score, parts))
        threaded = rows / (time.perf_counter() - started)
    return {"rows": rows, "single_call_rows_per_s": round(single_call, 1), "threaded_rows_per_s": round(threaded, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000], help="input sizes")
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--model-version", default="latest")
    parser.add_argument("--data-dir", type=Path, help="where the inputs go (default: a temp dir, removed after)")
    args = parser.parse_args()
    load_at_start = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="fraud-batch-bench-") as tmp:
        data = args.data_dir or Path(tmp)
        data.mkdir(parents=True, exist_ok=True)
        # In a child of its own: ru_maxrss of a child includes the RSS its parent had when it forked, so this
        # process must stay small or every engine run reports (at least) the raw run's models and matrix.
        # Measured again right before each engine run: the load of a shared box drifts within minutes.
        pool = multiprocessing.get_context("spawn").Pool(1)
        runs = []
        for rows in args.rows:
            source = data / f"transactions-{rows}.parquet"
            if not source.exists():
                started = time.perf_counter()
                generate(source, rows)
                print(f"generated {rows:,} rows in {time.perf_counter() - started:.1f}s", file=sys.stderr)
            raw = pool.apply(raw_rate, (args,))
            reference = max(raw["single_call_rows_per_s"], raw["threaded_rows_per_s"])
            result: dict[str, Any] = run_engine(source, Path(tmp) / f"out-{rows}", args)
            result["rows"] = rows
            result["raw_model"] = raw
            result["vs_raw"] = round(result["rows_per_s"] / reference, 3)
            runs.append(result)
            print(f"scored {rows:,} rows: {result}", file=sys.stderr)
        pool.close()
        pool.join()

    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_avg_at_start": load_at_start,
        "load_avg_at_end": os.getloadavg(),
        "chunk_rows": args.chunk_rows,
        "workers": args.workers,
        "local_engine": runs,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    for r in runs:
        raw = r["raw_model"]
        print(
            f"raw model rate before the {r['rows']:,}-row run (1M preloaded rows): one call "
            f"{raw['single_call_rows_per_s']:,.0f} rows/s, {args.workers} threads "
            f"{raw['threaded_rows_per_s']:,.0f} rows/s"
        )
    print("| rows | engine rows/s (scoring) | wall s (incl. start-up) | vs raw | peak RSS MiB |")
    print("|---:|---:|---:|---:|---:|")
    for r in runs:
        print(f"| {r['rows']:,} | {r['rows_per_s']:,.0f} | {r['wall_s']} | {r['vs_raw']:.0%} | {r['peak_rss_mib']} |")
    print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
