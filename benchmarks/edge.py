"""Member runtimes: scikit-learn vs ONNX runners (the graphs stored with the members) vs the compact edge bundle.

    .venv/bin/python -m benchmarks.edge                  # models from $BENTOML_HOME (make models)
    .venv/bin/python -m benchmarks.edge --rows 20000 --batch-sizes 1,64,1024 --min-time-s 1

Builds the runner classes of both runtimes from the store and calls them in-process (no HTTP:
``runners.factory.build_runner(member, runtime).inner()``), one thread each as the served
runners are; the "full" edge bundle holds the same float64 graphs as the store, so the compact
bundle (exported into a temp dir) is measured with its own scorer. On the same seeded rows:
rows/s per member and batch size, the whole ensemble (3 members + combine) per variant, model
sizes on disk, and the max |score difference| to scikit-learn. Prints a table, writes
benchmarks/results/edge.json. Compare ratios, not absolute numbers: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bentoml
import numpy as np

from fraudserve.edge.bundle import bundle_size, export_bundle
from fraudserve.edge.parity import parity_rows, reference_scores
from fraudserve.edge.scorer import EdgeBundle
from fraudserve.local import load_local
from fraudserve.rollout.versions import with_version_column
from models import store

RESULTS = Path(__file__).parent / "results" / "edge.json"


def rate(fn: Callable[[np.ndarray], Any], rows: np.ndarray, batch: int, min_time_s: float) -> float:
    """Rows/s of ``fn`` over ``rows`` in batches of ``batch``, looping until ``min_time_s`` has passed."""
    fn(rows[:batch])  # warm-up (lazy init, caches)
    done = 0
    started = time.perf_counter()
    while True:
        for start in range(0, len(rows), batch):
            fn(rows[start : start + batch])
            done += min(batch, len(rows) - start)
            if time.perf_counter() - started >= min_time_s:
                return done / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.edge", description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000, help="seeded rows scored by every variant")
    parser.add_argument("--batch-sizes", default="1,64,1024", help="rows per call, comma-separated")
    parser.add_argument("--min-time-s", type=float, default=1.0, help="time per measurement")
    parser.add_argument("--version", help="ensemble version (default: FRAUD_MODEL_VERSION, latest)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batch_sizes.split(",")]

    if args.version:
        # The runner modules read the settings once, at import.
        os.environ["FRAUD_MODEL_VERSION"] = args.version
    from runners.factory import build_runner

    spec, local = load_local(version=args.version)
    rows = parity_rows(spec.schema, args.rows, seed=4242)
    # Runners take [version code, features...] rows (fraudserve/rollout/versions.py).
    coded = with_version_column(rows, spec.version)
    expected = reference_scores({m: local.estimators[m] for m in spec.members}, rows)
    expected_p = spec.combine(expected)

    results: list[dict[str, Any]] = []
    runners = {rt: {m: build_runner(m, rt).inner() for m in spec.members} for rt in ("sklearn", "onnx")}
    for member in spec.members:
        stored = Path(bentoml.models.get(spec.tag(member)).path)
        for rt, artifact in (("sklearn", store.ARTIFACT), ("onnx", store.ONNX_ARTIFACT)):
            runner = runners[rt][member]
            if runner.runtime != rt:
                raise SystemExit(f"{spec.tag(member)} has no usable ONNX graph; retrain it (python -m models.train)")
            diff = float(np.max(np.abs(runner.score(coded) - expected[member])))
            size = (stored / artifact).stat().st_size
            _measure(results, rt, member, size, diff, runner.score, coded, batches, args)

    for rt in ("sklearn", "onnx"):

        def ensemble(x: np.ndarray, members: dict[str, Any] = runners[rt]) -> np.ndarray:
            return spec.combine({m: members[m].score(x) for m in spec.members})

        diff = float(np.max(np.abs(ensemble(coded) - expected_p)))
        total = sum(r["size_bytes"] for r in results if r["variant"] == rt and r["batch"] == batches[0])
        _measure(results, rt, "ensemble", total, diff, ensemble, coded, batches, args)

    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        path = Path(tmp) / "compact"
        export_bundle(spec, local.estimators, path, variant="compact")
        sizes = bundle_size(path)
        # The bundle's own scorer (as on a device) takes plain feature rows.
        for member in spec.members:
            one = EdgeBundle(path, only=[member])
            diff = float(np.max(np.abs(one.member_scores(rows)[member] - expected[member])))

            def member_score(x: np.ndarray, b: EdgeBundle = one, m: str = member) -> np.ndarray:
                return b.member_scores(x)[m]

            size = sizes[f"members/{member}.onnx"]
            _measure(results, "onnx-compact", member, size, diff, member_score, rows, batches, args)
        bundle = EdgeBundle(path)
        diff = float(np.max(np.abs(bundle.score(rows).probabilities - expected_p)))
        _measure(
            results,
            "onnx-compact",
            "ensemble",
            sizes["members_total"],
            diff,
            lambda x: bundle.score(x),
            rows,
            batches,
            args,
        )

    print(_table(results))
    report = {
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()} (shared, noisy)",
        "model_version": spec.version,
        "rows": len(rows),
        "threads": 1,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def _measure(
    results: list[dict[str, Any]],
    variant: str,
    member: str,
    size: int,
    diff: float,
    fn: Callable[[np.ndarray], Any],
    rows: np.ndarray,
    batches: list[int],
    args: argparse.Namespace,
) -> None:
    for batch in batches:
        results.append(
            {
                "variant": variant,
                "member": member,
                "batch": batch,
                "rows_per_s": round(rate(fn, rows, batch, args.min_time_s), 1),
                "size_bytes": size,
                "max_abs_diff": diff,
            }
        )


def _table(results: list[dict[str, Any]]) -> str:
    lines = [
        f"{'member':9s} {'variant':13s} {'batch':>6s} {'rows/s':>12s} {'size bytes':>11s} {'max abs diff':>13s}",
    ]
    for r in results:
        lines.append(
            f"{r['member']:9s} {r['variant']:13s} {r['batch']:>6d} {r['rows_per_s']:>12,.0f} "
            f"{r['size_bytes']:>11,d} {r['max_abs_diff']:>13.2g}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
