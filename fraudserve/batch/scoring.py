"""One chunk in, scored rows and rejected rows out: the same steps as the online inference core.

encode_frame validates and encodes (bad rows get a reason and keep their input row number), and the
valid rows go through the one scoring function (``fraudserve.scoring.score_rows``) that the online
inference core uses too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from fraudserve.ensemble import EnsembleSpec
from fraudserve.features import EncodedFrame, encode_frame
from fraudserve.local import LocalScorer
from fraudserve.schema import FeatureSchema
from fraudserve.scoring import score_rows, threshold_for

from .source import Chunk
from .stats import ChunkStats

ROW_NUMBER = "row_number"


@dataclass(frozen=True)
class ScoredChunk:
    chunk_id: int
    scored: pa.Table
    rejected: pa.Table
    stats: ChunkStats
    model_versions: dict[str, str]


@dataclass(frozen=True)
class OutputLayout:
    """Which columns the output and the rejected-rows file carry."""

    schema: FeatureSchema
    members: tuple[str, ...]
    id_column: str | None

    @property
    def id_name(self) -> str:
        return self.id_column or ROW_NUMBER

    def member_column(self, member: str) -> str:
        return f"score_{member}"

    def scored_table(
        self,
        chunk: Chunk,
        valid: np.ndarray,
        probabilities: np.ndarray,
        decisions: np.ndarray,
        member_scores: Mapping[str, np.ndarray],
        version: str,
    ) -> pa.Table:
        ids = self._ids(chunk).filter(pa.array(valid))
        columns: dict[str, pa.Array | pa.ChunkedArray] = {
            self.id_name: ids,
            "fraud_probability": pa.array(probabilities, pa.float64()),
            "is_fraud": pa.array(decisions, pa.bool_()),
        }
        for m in self.members:
            columns[self.member_column(m)] = pa.array(np.asarray(member_scores[m], dtype=np.float64), pa.float64())
        # pa.repeat, not pa.array([version] * n): ~40x cheaper per chunk (no 100k-element Python list).
        columns["model_version"] = pa.repeat(pa.scalar(version, pa.string()), len(probabilities))
        return pa.table(columns)

    def rejected_table(self, chunk: Chunk, reasons: Mapping[int, str]) -> pa.Table:
        """Rejected rows with their input row number, id, reason and raw values (as text)."""
        positions = np.fromiter(sorted(reasons), dtype=np.int64, count=len(reasons))
        taken = chunk.table.take(pa.array(positions))
        columns: dict[str, pa.Array | pa.ChunkedArray] = {ROW_NUMBER: pa.array(chunk.start_row + positions)}
        if self.id_column:
            columns[self.id_column] = taken.column(self.id_column).cast(pa.string())
        columns["reason"] = pa.array([reasons[int(p)] for p in positions], pa.string())
        for name in self.schema.names:
            columns[name] = taken.column(name).cast(pa.string())
        return pa.table(columns)

    def output_schema(self, id_type: pa.DataType) -> pa.Schema:
        fields = [
            pa.field(self.id_name, id_type if self.id_column else pa.int64()),
            pa.field("fraud_probability", pa.float64()),
            pa.field("is_fraud", pa.bool_()),
        ]
        fields += [pa.field(self.member_column(m), pa.float64()) for m in self.members]
        fields.append(pa.field("model_version", pa.string()))
        return pa.schema(fields)

    def rejected_schema(self) -> pa.Schema:
        fields = [pa.field(ROW_NUMBER, pa.int64())]
        if self.id_column:
            fields.append(pa.field(self.id_column, pa.string()))
        fields.append(pa.field("reason", pa.string()))
        fields += [pa.field(name, pa.string()) for name in self.schema.names]
        return pa.schema(fields)

    def _ids(self, chunk: Chunk) -> pa.Array | pa.ChunkedArray:
        if self.id_column:
            return chunk.table.column(self.id_column)
        return pa.array(np.arange(chunk.start_row, chunk.start_row + chunk.table.num_rows, dtype=np.int64))


def encode_chunk(schema: FeatureSchema, chunk: Chunk) -> EncodedFrame:
    return encode_frame(schema, chunk.table.select(schema.names).to_pandas())


class LocalChunkScorer:
    """Scores chunks with the member models held in this process (thread-safe: read-only models)."""

    def __init__(self, spec: EnsembleSpec, scorer: LocalScorer, layout: OutputLayout, threshold: float | None) -> None:
        self.spec = spec
        self.scorer = scorer
        self.layout = layout
        self.threshold_override = threshold
        self.threshold = threshold_for(spec, threshold)
        self.model_versions = spec.tags()

    def __call__(self, chunk: Chunk) -> ScoredChunk:
        encoded = encode_chunk(self.spec.schema, chunk)
        matrix = encoded.matrix
        scores = score_rows(self.spec, self.scorer.score_all, matrix, threshold_override=self.threshold_override)
        return ScoredChunk(
            chunk_id=chunk.id,
            scored=self.layout.scored_table(
                chunk, encoded.valid, scores.probabilities, scores.decisions, scores.member_scores, self.spec.version
            ),
            rejected=self.layout.rejected_table(chunk, encoded.reasons),
            stats=ChunkStats.of(scores.probabilities, scores.decisions, encoded.reasons, chunk.table.num_rows),
            model_versions=self.model_versions,
        )
