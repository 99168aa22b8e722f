"""Drives chunks through a scorer and into the output: read -> score -> write, a few in flight.

The reader runs in the calling thread and stays at most ``2 * workers`` chunks ahead, so memory
is bounded by the chunk size, not the input size. Scoring and part writing run in worker
threads (sklearn, numpy and Arrow release the GIL for the heavy parts); only the calling
thread touches the manifest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from fraudserve import tracing

from .progress import Progress
from .scoring import ScoredChunk
from .sink import Output
from .source import Chunk, InputFiles
from .stats import ChunkStats

ChunkScorer = Callable[[Chunk], ScoredChunk]


@dataclass(frozen=True)
class RunCounts:
    chunks: int
    resumed: int
    rows_scored: int
    duration_s: float


def run_chunks(
    source: InputFiles, chunk_rows: int, scorer: ChunkScorer, output: Output, *, workers: int, progress: Progress
) -> RunCounts:
    started = time.perf_counter()
    chunks = resumed = rows_scored = 0

    def work(chunk: Chunk) -> ScoredChunk:
        with tracing.span("batch.chunk", chunk=chunk.id, rows=chunk.table.num_rows):
            result = scorer(chunk)
            output.write_parts(result)
        return result

    def finish(done: set[Future[ScoredChunk]]) -> None:
        nonlocal rows_scored
        for future in done:
            result = future.result()
            output.record(result)
            progress.advance(result.stats.rows_in)
            rows_scored += result.stats.rows_in

    inflight: set[Future[ScoredChunk]] = set()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fraud-batch") as pool:
        try:
            for chunk in source.chunks(chunk_rows):
                chunks += 1
                if chunk.id in output.done:
                    resumed += 1
                    progress.skip(chunk.table.num_rows)
                    continue
                while len(inflight) >= 2 * workers:
                    done, inflight = _wait_first(inflight)
                    finish(done)
                inflight.add(pool.submit(work, chunk))
            while inflight:
                done, inflight = _wait_first(inflight)
                finish(done)
        except BaseException:
            for future in inflight:
                future.cancel()
            raise
    progress.close()
    return RunCounts(chunks=chunks, resumed=resumed, rows_scored=rows_scored, duration_s=time.perf_counter() - started)


def _wait_first(inflight: set[Future[ScoredChunk]]) -> tuple[set[Future[ScoredChunk]], set[Future[ScoredChunk]]]:
    done, pending = wait(inflight, return_when=FIRST_COMPLETED)
    return done, set(pending)


def summary(
    *,
    engine: str,
    input_path: str,
    output: Output,
    counts: RunCounts,
    threshold: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    totals = output.totals()
    versions = output.model_versions
    return {
        "engine": engine,
        "input": input_path,
        "output": str(output.path),
        "rejected_file": str(output.rejected_path),
        **totals_fields(totals, threshold),
        "chunks": counts.chunks,
        "chunks_resumed": counts.resumed,
        "duration_s": round(counts.duration_s, 3),
        "rows_scored_this_run": counts.rows_scored,
        "rows_per_s": round(counts.rows_scored / counts.duration_s, 1) if counts.duration_s else None,
        "model_version": versions.get("ensemble", "").rpartition(":")[2] or None,
        "model_versions": versions,
        **(extra or {}),
    }


def totals_fields(totals: ChunkStats, threshold: float) -> dict[str, Any]:
    """The rows, rejects, flags and score distribution of a run, as every engine's summary reports them."""
    return {
        "rows_in": totals.rows_in,
        "rows_out": totals.rows_out,
        "rows_rejected": totals.rejected,
        "rejected_by_field": dict(totals.reasons.most_common()),
        "flagged": totals.flagged,
        "flagged_rate": totals.flagged / totals.rows_out if totals.rows_out else None,
        "threshold": threshold,
        "score_distribution": totals.score_distribution(),
    }


def render_summary(data: dict[str, Any]) -> str:
    dist = data["score_distribution"]
    lines = [
        f"scored {data['rows_out']:,} of {data['rows_in']:,} rows in {data['duration_s']:.1f}s "
        f"({data['rows_per_s'] or 0:,.0f} rows/s, engine {data['engine']}, model {data['model_version']})",
        f"  flagged as fraud: {data['flagged']:,} ({100 * (data['flagged_rate'] or 0):.2f}%, "
        f"threshold {data['threshold']:.3f})",
    ]
    if dist["mean"] is not None:
        q = dist["quantiles"]
        lines.append(
            f"  fraud_probability: mean {dist['mean']:.4f}, p50 <= {q['p50']}, p90 <= {q['p90']}, "
            f"p99 <= {q['p99']}, p99.9 <= {q['p99.9']}"
        )
    if data["rows_rejected"]:
        fields = ", ".join(f"{k}: {v:,}" for k, v in list(data["rejected_by_field"].items())[:5])
        lines.append(f"  rejected: {data['rows_rejected']:,} rows ({fields}) -> {data['rejected_file']}")
    else:
        lines.append("  rejected: 0 rows")
    if data["chunks_resumed"]:
        lines.append(f"  resumed: {data['chunks_resumed']} of {data['chunks']} chunks were done by an earlier run")
    lines.append(f"  output: {data['output']}")
    return "\n".join(lines)
