"""The one scoring function (fraudserve/scoring.py): combine, threshold rule, empty input."""

from __future__ import annotations

import numpy as np

from fraudserve.ensemble import EnsembleSpec
from fraudserve.scoring import combine_scores, score_rows, threshold_for
from models.transactions import TRANSACTION_SCHEMA

SPEC = EnsembleSpec(
    version="v1",
    prefix="t",
    schema=TRANSACTION_SCHEMA,
    members=("a", "b"),
    weights={"a": 2.0, "b": -1.0},
    links={"a": "logit", "b": "identity"},
    intercept=0.5,
    threshold=0.6,
    metrics={},
)


def members(spec: EnsembleSpec, matrix: np.ndarray) -> dict[str, np.ndarray]:
    return {"a": np.full(len(matrix), 0.9), "b": matrix[:, 0] / 1000.0}


def test_combine_applies_the_stack_and_the_trained_threshold() -> None:
    scores = combine_scores(SPEC, {"a": np.array([0.9, 0.1]), "b": np.array([0.0, 0.2])})
    z = 0.5 + 2.0 * np.log(np.array([0.9, 0.1]) / np.array([0.1, 0.9])) - np.array([0.0, 0.2])
    np.testing.assert_allclose(scores.probabilities, 1 / (1 + np.exp(-z)))
    assert scores.threshold == 0.6 and scores.version == "v1"
    assert scores.decisions.tolist() == (scores.probabilities >= 0.6).tolist() == [True, False]


def test_the_override_wins_over_the_trained_threshold() -> None:
    assert threshold_for(SPEC, None) == 0.6 and threshold_for(SPEC, 0.99) == 0.99
    scores = combine_scores(SPEC, {"a": np.array([0.9]), "b": np.array([0.0])}, threshold_override=0.999)
    assert scores.threshold == 0.999 and not scores.decisions[0]


def test_score_rows_scores_in_process_and_handles_no_rows() -> None:
    matrix = np.array([[100.0] + [0.0] * 9, [900.0] + [0.0] * 9])
    scores = score_rows(SPEC, members, matrix)
    np.testing.assert_allclose(scores.member_scores["b"], [0.1, 0.9])
    empty = score_rows(SPEC, members, np.empty((0, 10)))
    assert len(empty.probabilities) == 0 and empty.decisions.dtype == bool
    assert set(empty.member_scores) == {"a", "b"}
