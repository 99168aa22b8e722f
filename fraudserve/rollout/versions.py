"""The version code sent to the runners as the first column of the feature matrix.

One batch of a runner may hold rows for several model versions (canary and stable requests
are batched together), so each row carries its version as ``float(crc32(version))``: a 32-bit
integer is exact in float64, and a float column keeps the matrix one dtype.
"""

from __future__ import annotations

import zlib

import numpy as np


def version_code(version: str) -> float:
    return float(zlib.crc32(version.encode("utf-8")))


def with_version_column(features: np.ndarray, version: str) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be a 2-D matrix, got shape {features.shape}")
    return np.hstack([np.full((len(features), 1), version_code(version)), features])
