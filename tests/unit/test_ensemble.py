from __future__ import annotations

import numpy as np
import pytest

from fraudserve.ensemble import combine, link


def test_combine_is_a_logistic_stack() -> None:
    scores = {"a": np.array([0.5, 0.9]), "b": np.array([0.2, 0.7])}
    out = combine(scores, {"a": 1.0, "b": 0.0}, {"a": "logit", "b": "identity"}, 0.0)
    np.testing.assert_allclose(out, [0.5, 0.9])
    out = combine(scores, {"a": 0.0, "b": 2.0}, {"a": "logit", "b": "identity"}, -1.0)
    np.testing.assert_allclose(out, 1 / (1 + np.exp(-(2 * scores["b"] - 1))))


def test_logit_link_is_clipped() -> None:
    assert np.isfinite(link("logit", np.array([0.0, 1.0]))).all()
    with pytest.raises(ValueError, match="unknown link"):
        link("probit", np.array([0.1]))
