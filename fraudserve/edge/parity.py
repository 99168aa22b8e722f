"""Parity of exported ONNX scores with scikit-learn: the rows, the tolerances and the measure.

One definition for both exports that are checked before they are written: an edge bundle
(``bundle.py``, every member plus the ensemble) and a member's ``model.onnx`` in the model store
(``models/onnx_export.py``, at training time).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fraudserve.schema import FeatureSchema

Variant = Literal["full", "compact"]
VARIANTS: tuple[Variant, ...] = ("full", "compact")
# Largest allowed |exported - scikit-learn| of any member score or ensemble probability on the
# parity rows. Measured: full ~1e-12 (ensemble; members ~1e-15); compact: see the notes/README.
TOLERANCE: dict[Variant, float] = {"full": 1e-9, "compact": 1e-5}
PARITY_ROWS = 4_000


@dataclass(frozen=True)
class Parity:
    rows: int
    max_abs_diff: dict[str, float]
    decisions_changed: int
    tolerance: float

    @property
    def ok(self) -> bool:
        # NaN differences (an export that returns NaN) are never ok.
        return all(diff <= self.tolerance for diff in self.max_abs_diff.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "max_abs_diff": self.max_abs_diff,
            "decisions_changed": self.decisions_changed,
            "tolerance": self.tolerance,
            "ok": self.ok,
        }

    def worst(self) -> str:
        """The score that differs most (a NaN difference counts as the worst)."""
        return max(self.max_abs_diff, key=lambda k: np.inf if np.isnan(d := self.max_abs_diff[k]) else d)


def measure(
    expected: Mapping[str, np.ndarray],
    got: Mapping[str, np.ndarray],
    tolerance: float,
    *,
    decisions_changed: int = 0,
) -> Parity:
    """Max |got - expected| of every score in ``expected``, against ``tolerance``."""
    diffs = {}
    for name, reference in expected.items():
        values = np.asarray(got[name], dtype=np.float64)
        if values.shape != reference.shape:
            diffs[name] = float("nan")
            continue
        diffs[name] = float(np.max(np.abs(values - reference))) if len(reference) else 0.0
    rows = len(next(iter(expected.values()))) if expected else 0
    return Parity(rows=rows, max_abs_diff=diffs, decisions_changed=decisions_changed, tolerance=tolerance)


def parity_rows(schema: FeatureSchema, n: int, seed: int = 2024) -> np.ndarray:
    """Encoded rows for parity checks: realistic transactions where the schema is ours, plus rows
    spread over the whole valid range of each feature (logarithmically for wide ranges)."""
    from models.transactions import TRANSACTION_SCHEMA, generate_transactions

    rng = np.random.default_rng(seed)
    blocks = []
    n_spread = n
    if schema == TRANSACTION_SCHEMA:
        from fraudserve.features import encode_frame

        blocks.append(encode_frame(schema, generate_transactions(n - n // 4, seed=seed)).matrix)
        n_spread = n // 4
    spread = np.empty((n_spread, len(schema.features)), dtype=np.float64)
    for c, f in enumerate(schema.features):
        if f.kind == "category":
            spread[:, c] = rng.integers(0, len(f.categories or ()), n_spread)
        elif f.kind == "bool":
            spread[:, c] = rng.integers(0, 2, n_spread)
        else:
            lo = f.minimum if f.minimum is not None else -1e3
            hi = f.maximum if f.maximum is not None else 1e3
            values = lo + np.expm1(rng.uniform(0, np.log1p(hi - lo), n_spread))
            spread[:, c] = np.clip(np.floor(values) if f.kind == "int" else np.round(values, 2), lo, hi)
    blocks.append(spread)
    return np.vstack(blocks)


def reference_scores(members: Mapping[str, Any], matrix: np.ndarray) -> dict[str, np.ndarray]:
    """What the scikit-learn estimators return (``models.members.SCORE``) on ``matrix``."""
    from models.members import SCORE

    return {m: np.asarray(SCORE[m](estimator, matrix), dtype=np.float64) for m, estimator in members.items()}
