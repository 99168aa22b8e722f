"""The member models of the ensemble: what each one returns and how the stack reads it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Score = Callable[[Any, np.ndarray], np.ndarray]


def _fraud_probability(model: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict_proba(x)[:, 1], dtype=np.float64)


def _anomaly(model: Any, x: np.ndarray) -> np.ndarray:
    # score_samples is higher for normal rows; negate so that higher means stranger.
    return np.asarray(-model.score_samples(x), dtype=np.float64)


SCORE: dict[str, Score] = {"hgb": _fraud_probability, "logreg": _fraud_probability, "iforest": _anomaly}
LINKS: dict[str, str] = {"hgb": "logit", "logreg": "logit", "iforest": "identity"}
