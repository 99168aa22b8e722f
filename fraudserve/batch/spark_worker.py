"""What runs on the Spark executors: load the models once per Python worker, score Arrow batches.

Kept free of pyspark imports at module level apart from SparkFiles, and of driver state: the
function shipped to the executors carries only plain values (versions, paths, column names).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fraudserve.ensemble import EnsembleSpec
from fraudserve.features import encode_frame
from fraudserve.local import LocalScorer, load_local
from fraudserve.scoring import score_rows
from fraudserve.settings import get_settings

from .stats import reason_fields

FILE = "_fraud_file"
BLOCK = "_fraud_block"
REASON = "_fraud_reason"
REASON_FIELDS = "_fraud_reason_fields"

_LOADED: dict[tuple[str, str], tuple[EnsembleSpec, LocalScorer]] = {}


@dataclass(frozen=True)
class Job:
    prefix: str
    version: str
    threshold: float
    id_column: str | None
    id_name: str
    archives: tuple[str, ...]
    # (file path as Spark names it, split start byte) -> row number of the split's first row
    offsets: dict[tuple[str, int], int]


def models(job: Job) -> tuple[EnsembleSpec, LocalScorer]:
    key = (job.prefix, job.version)
    if key not in _LOADED:
        if job.archives:
            import bentoml
            from pyspark import SparkFiles

            for name in job.archives:
                # Already there when the executor shares the driver's store (local mode).
                with contextlib.suppress(bentoml.exceptions.BentoMLException):
                    bentoml.models.import_model(SparkFiles.get(name))
        _LOADED[key] = load_local(get_settings().model_copy(update={"model_prefix": job.prefix}), job.version)
    return _LOADED[key]


def score_partition(job: Job, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    spec, scorer = models(job)
    seen: dict[tuple[str, int], int] = {}
    for frame in batches:
        row_numbers = np.empty(len(frame), dtype=np.int64)
        # Rows of one split arrive in file order; count them to get each row's number.
        for (file, block), positions in frame.groupby([FILE, BLOCK], sort=False).indices.items():
            start = job.offsets[(file, int(block))] + seen.get((file, int(block)), 0)
            row_numbers[positions] = start + np.arange(len(positions))
            seen[(file, int(block))] = seen.get((file, int(block)), 0) + len(positions)
        yield score_frame(job, spec, scorer, frame, row_numbers)


def score_frame(
    job: Job, spec: EnsembleSpec, scorer: LocalScorer, frame: pd.DataFrame, row_numbers: np.ndarray
) -> pd.DataFrame:
    encoded = encode_frame(spec.schema, frame)
    n = len(frame)
    probabilities = np.full(n, np.nan)
    decisions = np.zeros(n, dtype=bool)
    member_scores = {m: np.full(n, np.nan) for m in spec.members}
    # The threshold was resolved once by the driver (threshold_for) and is passed as the override.
    scores = score_rows(spec, scorer.score_all, encoded.matrix, threshold_override=job.threshold)
    probabilities[encoded.valid] = scores.probabilities
    decisions[encoded.valid] = scores.decisions
    for m in spec.members:
        member_scores[m][encoded.valid] = scores.member_scores[m]
    reasons = pd.Series([None] * n, dtype=object)
    fields = pd.Series([None] * n, dtype=object)
    for position, reason in encoded.reasons.items():
        reasons.iat[position] = reason
        fields.iat[position] = reason_fields(reason)
    out: dict[str, Any] = {"row_number": row_numbers}
    if job.id_column:
        out[job.id_column] = frame[job.id_column].to_numpy()
    out["fraud_probability"] = probabilities
    out["is_fraud"] = decisions
    for m in spec.members:
        out[f"score_{m}"] = member_scores[m]
    out["model_version"] = spec.version
    out[REASON] = reasons
    out[REASON_FIELDS] = fields
    for name in spec.schema.names:
        out[f"_raw_{name}"] = frame[name].astype("string").astype(object).where(~encoded.valid, None)
    return pd.DataFrame(out)
