"""Edge export: scikit-learn runners vs ONNX runners (full and compact bundles) on the same rows.

    .venv/bin/python -m benchmarks.edge                  # models from $BENTOML_HOME (make models)
    .venv/bin/python -m benchmarks.edge --rows 20000 --batch-sizes 1,64,1024 --min-time-s 1

Exports both bundle variants into a temp dir, then calls the runner classes in-process (no
HTTP: ``runners/hgb.py`` etc. and ``runners/onnx.py``, built with ``.inner()``), one thread each
as the served runners are, on the same seeded rows: rows/s per member and batch size, the whole
ensemble (3 members + combine) per variant, model sizes on disk, and the max |score difference|
to scikit-learn. Prints a table, writes benchmarks/results/edge.json. Compare ratios, not
absolute numbers: the machine is shared and noisy.
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

from fraudserve.edge.bundle import bundle_size, export_bundle, parity_rows
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
    from runners.onnx import build_onnx_runner

    spec, local = load_local(version=args.version)
    rows = parity_rows(spec.schema, args.rows, seed=4242)
    # Runners take [version code, features...] rows (fraudserve/rollout/versions.py).
    coded = with_version_column(rows, spec.version)
    expected = {m: local.score_sync(m, rows) for m in spec.members}
    expected_p = spec.combine(expected)

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        bundles = {v: Path(tmp) / v for v in ("full", "compact")}
        for variant, path in bundles.items():
            export_bundle(spec, local.estimators, path, variant=variant)  # type: ignore[arg-type]

        sklearn_runners = {m: _sklearn_runner(m) for m in spec.members}
        for member in spec.members:
            artifact = Path(bentoml.models.get(spec.tag(member)).path) / store.ARTIFACT
            _measure(
                results,
                "sklearn",
                member,
                artifact.stat().st_size,
                0.0,
                sklearn_runners[member].score,
                coded,
                batches,
                args,
            )
            for variant, path in bundles.items():
                runner = build_onnx_runner(member).inner(path)
                diff = float(np.max(np.abs(runner.score(coded) - expected[member])))
                size = bundle_size(path)[f"members/{member}.onnx"]
                _measure(results, f"onnx-{variant}", member, size, diff, runner.score, coded, batches, args)

        def sklearn_ensemble(x: np.ndarray) -> np.ndarray:
            return spec.combine({m: sklearn_runners[m].score(x) for m in spec.members})

        total = sum(r["size_bytes"] for r in results if r["variant"] == "sklearn" and r["batch"] == batches[0])
        _measure(results, "sklearn", "ensemble", total, 0.0, sklearn_ensemble, coded, batches, args)
        # The bundle's own scorer (as on a device) takes plain feature rows.
        for variant, path in bundles.items():
            bundle = EdgeBundle(path)
            diff = float(np.max(np.abs(bundle.score(rows).probabilities - expected_p)))
            size = bundle_size(path)["members_total"]
            _measure(
                results, f"onnx-{variant}", "ensemble", size, diff, lambda x, b=bundle: b.score(x), rows, batches, args
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


def _sklearn_runner(member: str) -> Any:
    import importlib

    module = importlib.import_module(f"runners.{member}")
    return getattr(module, f"{member.capitalize()}Runner").inner()


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
