from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fraudserve.errors import InvalidInput, PayloadTooLarge
from fraudserve.inference import InferenceCore
from fraudserve.local import load_local
from fraudserve.settings import Settings
from models.transactions import generate_transactions


@pytest.fixture(scope="module")
def core(trained: str) -> InferenceCore:
    spec, scorer = load_local(Settings(model_version=trained))
    return InferenceCore(spec, scorer, max_rows=50, bulk_rows_threshold=10, threshold=0.5)


class RecordingScorer:
    """Wraps the real in-process scorer to record which path (batched or bulk) the core chose."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.calls: list[tuple[str, int, bool]] = []

    async def __call__(self, member: str, features: np.ndarray, *, bulk: bool) -> np.ndarray:
        self.calls.append((member, len(features), bulk))
        return await self.inner(member, features, bulk=bulk)  # type: ignore[operator]


def test_row_limits(core: InferenceCore) -> None:
    rows = generate_transactions(51, seed=1).drop(columns="is_fraud").to_dict("records")
    with pytest.raises(PayloadTooLarge) as too_many:
        asyncio.run(core.predict(rows, transport="test"))
    assert too_many.value.field == "transactions"
    with pytest.raises(InvalidInput, match="at least one"):
        asyncio.run(core.predict([], transport="test"))


def test_threshold_override_and_bulk_routing(trained: str) -> None:
    spec, scorer = load_local(Settings(model_version=trained))
    recorder = RecordingScorer(scorer)
    core = InferenceCore(spec, recorder, max_rows=100, bulk_rows_threshold=10, threshold=0.99)
    rows = generate_transactions(11, seed=2).drop(columns="is_fraud").to_dict("records")
    scored = asyncio.run(core.predict(rows[:10], transport="test"))
    assert (scored.decisions == (scored.probabilities >= 0.99)).all()
    asyncio.run(core.predict(rows, transport="test"))
    assert {bulk for _, n, bulk in recorder.calls if n == 10} == {False}
    assert {bulk for _, n, bulk in recorder.calls if n == 11} == {True}
    assert sorted({m for m, _, _ in recorder.calls}) == ["hgb", "iforest", "logreg"]


def test_score_validates_encoded_matrix(core: InferenceCore) -> None:
    with pytest.raises(InvalidInput, match="shape"):
        asyncio.run(core.score(np.zeros((2, 3)), transport="test"))
    bad = core.schema.encode_records([core.schema.example_row()])
    bad[0, 0] = np.inf
    with pytest.raises(InvalidInput) as info:
        asyncio.run(core.score(bad, transport="test"))
    assert info.value.field == "transactions[0].amount"
