"""How member scores become one fraud probability: a logistic stack fitted at training time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fraudserve.schema import FeatureSchema

_EPS = 1e-6


def link(kind: str, scores: np.ndarray) -> np.ndarray:
    """Member score -> stacking input: probabilities on the logit scale, anomaly scores as they are."""
    if kind == "logit":
        p = np.clip(scores, _EPS, 1.0 - _EPS)
        return np.log(p / (1.0 - p))
    if kind == "identity":
        return scores
    raise ValueError(f"unknown link {kind!r}")


def combine(
    scores: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    links: Mapping[str, str],
    intercept: float,
) -> np.ndarray:
    z = np.full(len(next(iter(scores.values()))), intercept, dtype=np.float64)
    for member, weight in weights.items():
        z += weight * link(links[member], np.asarray(scores[member], dtype=np.float64))
    return 1.0 / (1.0 + np.exp(-z))


@dataclass(frozen=True)
class EnsembleSpec:
    """Everything the inference core needs to know about a trained ensemble."""

    version: str
    prefix: str
    schema: FeatureSchema
    members: tuple[str, ...]
    weights: dict[str, float]
    links: dict[str, str]
    intercept: float
    threshold: float
    metrics: dict[str, Any]

    def tag(self, member: str) -> str:
        return f"{self.prefix}_{member}:{self.version}"

    def tags(self) -> dict[str, str]:
        """Store tag of the ensemble and of each member, as responses and summaries report them."""
        return {"ensemble": self.tag("ensemble"), **{m: self.tag(m) for m in self.members}}

    def combine(self, scores: Mapping[str, np.ndarray]) -> np.ndarray:
        return combine(scores, self.weights, self.links, self.intercept)
