"""The Spark engine: the same scoring as the local engine, spread over a Spark cluster.

Executors read the input themselves and score it with ``mapInPandas`` (Arrow batches of
``--arrow-batch-rows``), the models loaded once per Python worker from the model store. The
models travel with the job (exported archives added with ``SparkContext.addFile`` and imported
into each executor's store), so executors need the bundle's Python packages but not the
driver's BENTOML_HOME; ``--no-ship-models`` makes them use their own BENTOML_HOME instead.
(``bentoml.batch.run_in_spark`` cannot run new-style services in BentoML 1.4: see docs/architecture.md.)

Row numbers equal the local engine's (0-based across the files in path order): a first pass
counts the rows of each input split, a second numbers each split's rows from that offset.

The output folder gets a ``_manifest.json`` (engine ``spark``) before Spark writes into it, so
``--overwrite`` deletes only folders fraud-batch wrote (a ``_SUCCESS`` file proves only that
*some* Spark job did), including the leftovers of a crashed Spark run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from fraudserve.errors import InvalidInput
from fraudserve.scoring import threshold_for
from fraudserve.settings import get_settings
from models import store

from .runner import totals_fields
from .scoring import ROW_NUMBER, OutputLayout
from .sink import MANIFEST, MANIFEST_FORMAT, atomic_write_text, fsync_dir, is_ours, make_dirs
from .source import InputFiles
from .spark_worker import BLOCK, FILE, REASON, REASON_FIELDS, Job, score_partition
from .stats import ChunkStats


def run_spark(args: argparse.Namespace) -> dict[str, Any]:
    try:
        from pyspark.sql import SparkSession
        from pyspark.sql import functions as F
    except ImportError:
        raise InvalidInput(
            "the Spark engine needs pyspark: pip install -r requirements-spark.txt (and Java 17)", field="--engine"
        ) from None

    settings = get_settings()
    started = time.perf_counter()
    spec = store.load_ensemble(settings.model_prefix, args.model_version)
    threshold = threshold_for(spec, settings.decision_threshold)
    layout = OutputLayout(spec.schema, spec.members, args.id_column)
    source = InputFiles(args.input, spec.schema.names, args.id_column)
    output = Path(args.output)
    if output.suffix.lower() in {".parquet", ".csv"}:
        raise InvalidInput("the Spark engine writes a folder of Parquet parts; name a folder as output", field="output")
    if output.exists() and any(output.iterdir()):
        if not args.overwrite:
            raise InvalidInput(f"output {output} already exists; pass --overwrite to replace it", field="output")
        if not is_ours(output):
            raise InvalidInput(
                f"refusing to overwrite {output}: it is not a fraud-batch output (no {MANIFEST})", field="output"
            )
        shutil.rmtree(output)
        fsync_dir(output.parent)
    make_dirs(output)
    _write_manifest(output, complete=False)

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(args.master)
        .appName("fraud-batch")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(args.arrow_batch_rows))
        .config("spark.ui.showConsoleProgress", "false")
    )
    for item in args.spark_conf:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--spark-conf {item!r}: expected KEY=VALUE", field="--spark-conf")
        builder = builder.config(key.strip(), value.strip())
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    workdir = Path(tempfile.mkdtemp(prefix="fraud-batch-spark-"))
    try:
        archives: tuple[str, ...] = ()
        if not args.no_ship_models:
            archives = _ship_models(spark, spec, workdir)

        paths = [str(f.resolve()) for f in source.files]
        if source.format == "parquet":
            frame = spark.read.parquet(*paths)
        else:
            # Text columns, as in the local engine: a bad value rejects its row, not the job.
            frame = spark.read.option("header", "true").option("inferSchema", "false").csv(paths)
        frame = frame.select(
            *source.columns,
            F.col("_metadata.file_path").alias(FILE),
            F.col("_metadata.file_block_start").alias(BLOCK),
        )
        offsets = _split_offsets(frame.groupBy(FILE, BLOCK).count().collect(), source.files)
        job = Job(
            prefix=settings.model_prefix,
            version=spec.version,
            threshold=threshold,
            id_column=args.id_column,
            id_name=layout.id_name,
            archives=archives,
            offsets=offsets,
        )
        id_type = frame.schema[args.id_column].dataType.simpleString() if args.id_column else "bigint"
        scored = frame.mapInPandas(functools.partial(score_partition, job), _ddl(layout, id_type)).persist()
        try:
            out_cols = [layout.id_name, "fraud_probability", "is_fraud"]
            out_cols += [layout.member_column(m) for m in spec.members] + ["model_version"]
            ok = F.col(REASON).isNull()
            # Append: "overwrite" would make Spark delete the folder, our manifest with it.
            scored.filter(ok).select(*out_cols).write.mode("append").parquet(str(output))
            rejected_cols = [ROW_NUMBER] + ([args.id_column] if args.id_column else []) + [REASON]
            rejected = (
                scored.filter(~ok)
                .select(
                    *[F.col(c).cast("string") if c == args.id_column else F.col(c) for c in rejected_cols],
                    *[F.col(f"_raw_{n}").alias(n) for n in spec.schema.names],
                )
                .withColumnRenamed(REASON, "reason")
            )
            _write_single_csv(rejected.orderBy(ROW_NUMBER), output / "_rejected.csv", workdir)
            totals = _totals(scored, F)
        finally:
            scored.unpersist()
    finally:
        spark.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    duration = time.perf_counter() - started
    result = {
        "engine": "spark",
        "master": args.master,
        "input": str(args.input),
        "output": str(output),
        "rejected_file": str(output / "_rejected.csv"),
        **totals_fields(totals, threshold),
        "chunks": None,
        "chunks_resumed": 0,
        "rows_scored_this_run": totals.rows_in,
        "duration_s": round(duration, 3),
        "rows_per_s": round(totals.rows_in / duration, 1),
        "model_version": spec.version,
        "model_versions": spec.tags(),
        "arrow_batch_rows": args.arrow_batch_rows,
    }
    _write_manifest(output, complete=True)
    atomic_write_text(output / "_summary.json", json.dumps(result, indent=2))
    return result


def _write_manifest(output: Path, *, complete: bool) -> None:
    # No chunks and a key no local run has: `--resume` of a local run refuses it, `--overwrite` accepts it.
    data = {
        "format": MANIFEST_FORMAT,
        "engine": "spark",
        "key": {"engine": "spark"},
        "complete": complete,
        "chunks": {},
    }
    atomic_write_text(output / MANIFEST, json.dumps(data, indent=1))


def _ship_models(spark: Any, spec: Any, workdir: Path) -> tuple[str, ...]:
    import bentoml

    names = []
    for member in ("ensemble", *spec.members):
        tag = spec.tag(member)
        path = workdir / f"{tag.replace(':', '-')}.bentomodel"
        bentoml.models.export_model(tag, str(path))
        spark.sparkContext.addFile(str(path))
        names.append(path.name)
    return tuple(names)


def _split_offsets(counts: list[Any], files: list[Path]) -> dict[tuple[str, int], int]:
    order = {str(f.resolve()): i for i, f in enumerate(files)}
    splits = sorted(
        ((order[_local_path(r[FILE])], int(r[BLOCK]), r[FILE], int(r["count"])) for r in counts),
        key=lambda s: (s[0], s[1]),
    )
    offsets: dict[tuple[str, int], int] = {}
    start = 0
    for _, block, file, rows in splits:
        offsets[(file, block)] = start
        start += rows
    return offsets


def _local_path(uri: str) -> str:
    return str(Path(unquote(urlparse(uri).path)).resolve())


def _ddl(layout: OutputLayout, id_type: str) -> str:
    cols = [f"{ROW_NUMBER} bigint"]
    if layout.id_column:
        cols.append(f"`{layout.id_column}` {id_type}")
    cols += ["fraud_probability double", "is_fraud boolean"]
    cols += [f"{layout.member_column(m)} double" for m in layout.members]
    cols += ["model_version string", f"{REASON} string", f"{REASON_FIELDS} string"]
    cols += [f"_raw_{n} string" for n in layout.schema.names]
    return ", ".join(cols)


def _write_single_csv(frame: Any, path: Path, workdir: Path) -> None:
    target = workdir / "rejected"
    frame.coalesce(1).write.mode("overwrite").option("header", "true").csv(str(target))
    part = next(target.glob("part-*.csv"), None)
    tmp = path.with_name(f".{path.name}.tmp")
    if part is None:
        tmp.write_text("")
    else:
        shutil.copyfile(part, tmp)
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _totals(scored: Any, F: Any) -> ChunkStats:
    from collections import Counter

    from .stats import HIST_BINS

    ok = F.col(REASON).isNull()
    row = scored.agg(
        F.count(F.lit(1)).alias("rows_in"),
        F.sum(ok.cast("long")).alias("rows_out"),
        F.sum((ok & F.col("is_fraud")).cast("long")).alias("flagged"),
        F.sum(F.when(ok, F.col("fraud_probability")).otherwise(0.0)).alias("probability_sum"),
    ).collect()[0]
    bins = F.least(F.floor(F.col("fraud_probability") * HIST_BINS), F.lit(HIST_BINS - 1)).cast("int")
    histogram = scored.filter(ok).groupBy(bins.alias("bin")).count().collect()
    reasons = scored.filter(~ok).groupBy(REASON_FIELDS).count().collect()
    rows_in, rows_out = int(row["rows_in"]), int(row["rows_out"] or 0)
    return ChunkStats(
        rows_in=rows_in,
        rows_out=rows_out,
        rejected=rows_in - rows_out,
        flagged=int(row["flagged"] or 0),
        probability_sum=float(row["probability_sum"] or 0.0),
        reasons=Counter({r[REASON_FIELDS]: int(r["count"]) for r in reasons}),
        histogram=Counter({int(r["bin"]): int(r["count"]) for r in histogram}),
    )
