"""The one scoring function: member scores of encoded rows -> ensemble probability -> decision.

Every path ends here: ``InferenceCore`` (REST, OIP, the stream worker) once the runners or the in-process
members have answered, the local batch engine and the Spark executors. Nothing else combines member scores
or applies the decision threshold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from fraudserve.ensemble import EnsembleSpec

# (spec, encoded rows) -> {member: float64 scores}, computed in this process (fraudserve.local.LocalScorer.score_all).
MemberScores = Callable[[EnsembleSpec, np.ndarray], Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class EnsembleScores:
    member_scores: dict[str, np.ndarray]
    probabilities: np.ndarray
    decisions: np.ndarray
    threshold: float
    version: str


def threshold_for(spec: EnsembleSpec, override: float | None) -> float:
    """The one threshold rule: FRAUD_DECISION_THRESHOLD when set, else the one chosen at training."""
    return spec.threshold if override is None else override


def combine_scores(
    spec: EnsembleSpec, member_scores: Mapping[str, np.ndarray], *, threshold_override: float | None = None
) -> EnsembleScores:
    """Stack the members' scores of the same rows into the ensemble probability and decide."""
    scores = {m: np.asarray(member_scores[m], dtype=np.float64).reshape(-1) for m in spec.members}
    probabilities = spec.combine(scores) if len(next(iter(scores.values()))) else np.empty(0)
    threshold = threshold_for(spec, threshold_override)
    return EnsembleScores(scores, probabilities, probabilities >= threshold, threshold, spec.version)


def score_rows(
    spec: EnsembleSpec, members: MemberScores, matrix: np.ndarray, *, threshold_override: float | None = None
) -> EnsembleScores:
    """Synchronous scoring of encoded, validated rows with members held in this process."""
    if len(matrix) == 0:
        empty = {m: np.empty(0) for m in spec.members}
        return combine_scores(spec, empty, threshold_override=threshold_override)
    return combine_scores(spec, members(spec, matrix), threshold_override=threshold_override)
