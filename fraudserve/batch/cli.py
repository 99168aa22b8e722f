"""fraud-batch: score a CSV or Parquet file (or a folder of them) with the fraud ensemble.

Same models, features, ensemble and threshold as the online service. Each output row carries
the input's row id (--id-column, else the 0-based row number), fraud_probability, is_fraud,
one score_<model> column per member model and model_version. Rows that break the schema are
never dropped silently: they go to the rejected-rows file with their row number and reason.

examples:
  fraud-batch transactions.parquet scored/                       # local engine, partitioned Parquet
  fraud-batch data/ scored.csv --id-column txn_id                # a folder in, one CSV file out
  fraud-batch big.parquet scored/ --resume                       # continue a crashed run
  fraud-batch big.parquet scored/ --engine spark --master spark://host:7077
  fraud-batch big.csv scored/ --engine server --url http://fraud.internal:3000

output (a folder): part-NNNNN.parquet per chunk, _rejected.csv, _summary.json, _manifest.json.
output named *.parquet / *.csv: that one file, plus <name>.rejected.csv and <name>.summary.json.
exit status: 0 done, 2 bad input or usage, 3 models or server unavailable, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from fraudserve import tracing
from fraudserve.errors import FraudServeError, InvalidInput, ModelStoreError, Unavailable
from fraudserve.settings import get_settings

from .local_engine import load_local_scorer, scoring_threads
from .progress import Progress
from .runner import render_summary, run_chunks, summary
from .scoring import LocalChunkScorer
from .server import ServerChunkScorer
from .sink import Output
from .source import InputFiles

DEFAULT_CHUNK_ROWS = 100_000


def build_parser() -> argparse.ArgumentParser:
    settings = get_settings()
    p = argparse.ArgumentParser(
        prog="fraud-batch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("input", type=Path, help="a .parquet/.csv file, or a folder of them (one format)")
    p.add_argument("output", type=Path, help="output folder, or a single *.parquet / *.csv file")
    p.add_argument("--engine", choices=("local", "spark", "server"), default="local", help="default: local")
    p.add_argument("--id-column", help="input column to carry as the row id (default: the row number)")
    p.add_argument("--model-version", default=settings.model_version, help="ensemble version in the model store")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line")

    local = p.add_argument_group("local and server engines")
    local.add_argument(
        "--chunk-rows", type=_positive, default=DEFAULT_CHUNK_ROWS, help="rows per chunk and part file (100000)"
    )
    local.add_argument("--workers", type=_positive, default=os.cpu_count() or 1, help="chunks scored at once (cores)")
    local.add_argument("--resume", action="store_true", help="skip chunks an interrupted run already finished")

    spark = p.add_argument_group("spark engine (pip install -r requirements-spark.txt; Java 17)")
    spark.add_argument("--master", default="local[*]", help="Spark master URL (default local[*])")
    spark.add_argument("--arrow-batch-rows", type=_positive, default=100_000, help="Arrow records per batch")
    spark.add_argument(
        "--spark-conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Spark setting, repeatable (e.g. spark.executor.memory=4g)",
    )
    spark.add_argument(
        "--no-ship-models",
        action="store_true",
        help="load models from BENTOML_HOME on the executors instead of shipping them with the job",
    )

    server = p.add_argument_group("server engine")
    server.add_argument("--url", help="base URL of the deployed service, e.g. http://127.0.0.1:3000")
    server.add_argument(
        "--request-rows",
        type=_positive,
        default=settings.max_rows_per_request,
        help="rows per POST /predict (default FRAUD_MAX_ROWS_PER_REQUEST)",
    )
    server.add_argument("--concurrency", type=_positive, default=4, help="requests in flight (4)")
    server.add_argument("--retries", type=int, default=5, help="retries of a 503 / connection error (5)")
    server.add_argument("--timeout-s", type=float, default=120.0, help="timeout of one request (120)")
    server.add_argument(
        "--api-key-env",
        default="FRAUD_BATCH_API_KEY",
        help="environment variable holding the service's API key, sent as a bearer token (FRAUD_BATCH_API_KEY)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.engine == "server" and not args.url:
        parser.error("--engine server needs --url")
    if args.engine == "spark" and args.resume:
        parser.error("--resume is for the local and server engines; Spark retries failed tasks itself")
    tracing.configure_cli(get_settings(), "fraud-batch")
    try:
        if args.engine == "spark":
            from .spark import run_spark

            result = run_spark(args)
        else:
            result = run_files(args)
    except InvalidInput as exc:
        print(f"fraud-batch: error: {exc.message}", file=sys.stderr)
        return 2
    except (ModelStoreError, Unavailable) as exc:
        print(f"fraud-batch: error: {exc.message}", file=sys.stderr)
        return 3
    except FraudServeError as exc:
        print(f"fraud-batch: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fraud-batch: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    finally:
        tracing.shutdown_cli()
    print(render_summary(result))
    return 0


def run_files(args: argparse.Namespace) -> dict[str, object]:
    """The local and server engines: chunked, resumable, one Parquet part per chunk."""
    settings = get_settings()
    scorer: ServerChunkScorer | LocalChunkScorer
    if args.engine == "server":
        scorer = ServerChunkScorer(
            args.url,
            id_column=args.id_column,
            request_rows=args.request_rows,
            concurrency=args.concurrency,
            retries=args.retries,
            timeout_s=args.timeout_s,
            api_key=os.environ.get(args.api_key_env) or None,
        )
        layout, threshold, versions, workers = scorer.layout, scorer.threshold, scorer.info.model_versions, 1
    else:
        scorer, workers = load_local_scorer(settings, args.model_version, args.id_column), args.workers
        layout, threshold, versions = scorer.layout, scorer.threshold, scorer.model_versions

    source = InputFiles(args.input, layout.schema.names, args.id_column)
    key = {
        "input": source.fingerprint(),
        "chunk_rows": args.chunk_rows,
        "id_column": args.id_column,
        "model_versions": versions,
        "threshold": threshold,
    }
    output = Output(args.output, key=key, resume=args.resume, overwrite=args.overwrite)
    total, exact = source.estimated_rows()
    progress = Progress(total, exact=exact, quiet=args.quiet)
    if isinstance(scorer, LocalChunkScorer):
        with scoring_threads(workers):
            counts = run_chunks(source, args.chunk_rows, scorer, output, workers=workers, progress=progress)
    else:
        try:
            counts = run_chunks(source, args.chunk_rows, scorer, output, workers=workers, progress=progress)
        finally:
            scorer.close()
    result = summary(
        engine=args.engine,
        input_path=str(args.input),
        output=output,
        counts=counts,
        threshold=threshold,
        extra={"workers": workers, "chunk_rows": args.chunk_rows},
    )
    output.finalize(result, layout.output_schema(source.id_type()), layout.rejected_schema())
    return result


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


if __name__ == "__main__":
    sys.exit(main())
