"""Vectorised encoding of tabular frames (training, batch, stream) into model matrices."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fraudserve.schema import FeatureSchema, invalid_mask


@dataclass(frozen=True)
class EncodedFrame:
    """``matrix`` holds the valid rows only; ``rejected`` maps frame positions to a reason."""

    matrix: np.ndarray
    valid: np.ndarray
    reasons: dict[int, str]


def encode_frame(schema: FeatureSchema, frame: pd.DataFrame) -> EncodedFrame:
    missing = [name for name in schema.names if name not in frame.columns]
    if missing:
        from fraudserve.errors import InvalidInput

        raise InvalidInput(f"missing columns: {missing}", field=missing[0])
    n = len(frame)
    matrix = np.empty((n, len(schema.features)), dtype=np.float64)
    unknown = np.zeros((n, len(schema.features)), dtype=bool)
    for c, f in enumerate(schema.features):
        col = frame[f.name]
        if f.kind == "category":
            assert f.categories is not None
            codes = pd.Categorical(col.astype("string"), categories=list(f.categories)).codes
            matrix[:, c] = codes.astype(np.float64)
            unknown[:, c] = codes < 0
        elif f.kind == "bool":
            matrix[:, c] = _bool_column(col)
        else:
            matrix[:, c] = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = invalid_mask(schema, matrix) | unknown
    valid: np.ndarray = np.asarray(~bad.any(axis=1))
    reasons: dict[int, str] = {}
    if not valid.all():
        for r in np.flatnonzero(~valid):
            cols = [schema.features[c] for c in np.flatnonzero(bad[r])]
            reasons[int(r)] = "; ".join(f"{f.name}: invalid {f.kind} {frame.iloc[r][f.name]!r}" for f in cols)
    return EncodedFrame(matrix=matrix[valid], valid=valid, reasons=reasons)


_TRUE = {"true", "1", "1.0", "yes", "t", "y"}
_FALSE = {"false", "0", "0.0", "no", "f", "n"}


def _bool_column(col: pd.Series) -> np.ndarray:
    if pd.api.types.is_bool_dtype(col):
        return col.to_numpy(dtype=np.float64, na_value=np.nan)
    text = col.astype("string").str.strip().str.lower()
    out = np.full(len(col), np.nan)
    out[text.isin(_TRUE).fillna(False).to_numpy(dtype=bool)] = 1.0
    out[text.isin(_FALSE).fillna(False).to_numpy(dtype=bool)] = 0.0
    return out
