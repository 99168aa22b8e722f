"""Seeded, realistic request payloads for the load tests (models.transactions.generate_transactions).

A pool of transactions is generated once per process; each user draws requests from it with its own
seeded generator, so a run is repeatable for a given seed, user count and duration.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fraudserve.schema import FeatureSchema
from models.transactions import TRANSACTION_SCHEMA, generate_transactions

# OIP datatypes per schema kind: numbers travel as FP64 (ints included), bools as BOOL, categories as BYTES.
OIP_DATATYPES = {"float": "FP64", "int": "FP64", "bool": "BOOL", "category": "BYTES"}
_NUMPY_TYPES: dict[str, Any] = {"FP64": np.float64, "BOOL": np.bool_, "BYTES": np.object_}


@dataclass(frozen=True)
class RequestMix:
    """How many rows a request carries: 1 with probability ``single_row_share``, else one of ``multi_rows``."""

    single_row_share: float = 0.8
    multi_rows: tuple[int, ...] = (8, 32)

    def __post_init__(self) -> None:
        if not 0.0 <= self.single_row_share <= 1.0:
            raise ValueError(f"single_row_share must be within [0, 1], got {self.single_row_share}")
        if self.single_row_share < 1.0 and not self.multi_rows:
            raise ValueError("multi_rows must not be empty when single_row_share < 1")
        if any(n < 2 for n in self.multi_rows):
            raise ValueError(f"multi_rows must all be >= 2, got {self.multi_rows}")

    @classmethod
    def parse(cls, single_row_share: float, multi_rows: str) -> RequestMix:
        """From CLI/env values: a share and a comma-separated list of row counts ("8,32")."""
        try:
            sizes = tuple(int(part) for part in multi_rows.split(",") if part.strip())
        except ValueError:
            raise ValueError(f"multi_rows must be comma-separated integers, got {multi_rows!r}") from None
        return cls(single_row_share, sizes)


@dataclass
class TransactionPool:
    """``size`` generated transactions (label dropped) as JSON-ready records."""

    size: int = 2_000
    seed: int = 7
    schema: FeatureSchema = TRANSACTION_SCHEMA
    records: list[dict[str, Any]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        frame = generate_transactions(self.size, seed=self.seed)
        # Through JSON so every value is a plain Python scalar, exactly what a client would send.
        self.records = json.loads(frame[[f.name for f in self.schema.features]].to_json(orient="records"))

    def draw(self, rng: random.Random, mix: RequestMix) -> list[dict[str, Any]]:
        rows = 1 if rng.random() < mix.single_row_share else rng.choice(mix.multi_rows)
        start = rng.randrange(len(self.records))
        return [self.records[(start + i) % len(self.records)] for i in range(rows)]


def rest_body(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """POST /predict body: one object for a single row (as a client would send it), else a list."""
    return {"transactions": rows[0] if len(rows) == 1 else list(rows)}


def oip_columns(rows: Sequence[dict[str, Any]], schema: FeatureSchema = TRANSACTION_SCHEMA) -> dict[str, np.ndarray]:
    """One column per schema feature, typed as the OIP input it is sent as (shape [rows])."""
    columns: dict[str, np.ndarray] = {}
    for f in schema.features:
        datatype = OIP_DATATYPES[f.kind]
        values = [row[f.name] for row in rows]
        if datatype == "BYTES":
            values = [str(v).encode() for v in values]
        columns[f.name] = np.asarray(values, dtype=_NUMPY_TYPES[datatype])
    return columns
