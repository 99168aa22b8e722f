"""The entry worker's batching contract (fraudserve/batcher.py), with a scripted runner call: no server."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fraudserve.batcher import TAKE_AFTER_TURNS, RowBatcher
from fraudserve.errors import Unavailable
from fraudserve.rollout.versions import version_code

MEMBERS = ("hgb", "logreg")
FACTOR = {"hgb": 1.0, "logreg": 10.0}


class FakeRunners:
    """Scores each row as FACTOR[member] * (sum of its features) + its version code; records every call.

    ``hold`` keeps calls waiting until released, ``broken_codes`` get NaN (a version that cannot load),
    ``failing`` members raise like an unreachable runner.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, np.ndarray]] = []
        self.hold: asyncio.Event | None = None
        self.broken_codes: set[float] = set()
        self.failing: set[str] = set()

    async def __call__(self, member: str, coded: np.ndarray) -> np.ndarray:
        self.calls.append((member, coded.copy()))
        if self.hold is not None:
            await self.hold.wait()
        if member in self.failing:
            raise Unavailable(f"model runner {member!r} is unreachable; retry later")
        scores = FACTOR[member] * coded[:, 1:].sum(axis=1) + coded[:, 0]
        scores[np.isin(coded[:, 0], list(self.broken_codes))] = np.nan
        return scores

    def batches(self, member: str = "hgb") -> list[int]:
        return [len(coded) for m, coded in self.calls if m == member]


def expected(features: np.ndarray, version: str) -> dict[str, np.ndarray]:
    return {m: FACTOR[m] * features.sum(axis=1) + version_code(version) for m in MEMBERS}


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 100, size=(n, 4))


async def turns(n: int = TAKE_AFTER_TURNS + 5) -> None:
    """Let the loop run the tasks that are ready (dispatch, gather) without any clock involved."""
    for _ in range(n):
        await asyncio.sleep(0)


def batcher(runners: FakeRunners, **options: float) -> RowBatcher:
    return RowBatcher(runners, **{"max_batch_rows": 64, "max_queued_rows": 1024, **options})


def test_concurrent_answers_equal_sequential_and_reach_their_caller() -> None:
    requests = [rows(1 + i % 3, seed=i) for i in range(40)]

    async def run() -> tuple[list[dict[str, np.ndarray]], FakeRunners]:
        runners = FakeRunners()
        b = batcher(runners)
        answers = await asyncio.gather(*(b.score("v1", MEMBERS, r) for r in requests))
        return answers, runners

    answers, runners = asyncio.run(run())
    for request, answer in zip(requests, answers, strict=True):
        for member in MEMBERS:
            np.testing.assert_allclose(answer[member], expected(request, "v1")[member], rtol=1e-12)
    # One call per member per batch, and batches merged several requests.
    assert runners.batches("hgb") == runners.batches("logreg")
    assert len(runners.batches()) < len(requests)
    assert sum(runners.batches()) == sum(len(r) for r in requests)


def test_a_lone_request_is_sent_at_once_without_waiting_for_a_full_batch() -> None:
    async def run() -> FakeRunners:
        runners = FakeRunners()
        b = batcher(runners, max_batch_rows=512)
        task = asyncio.ensure_future(b.score("v1", MEMBERS, rows(1, seed=1)))
        await turns()  # a few loop turns, no clock: the batch must already be with the runners
        assert runners.batches() == [1]
        await task
        return runners

    asyncio.run(run())


def test_requests_submitted_while_a_batch_starts_join_it() -> None:
    """Scored in the worker a batch never yields: rows submitted in the turns before it starts must join it."""

    async def run() -> FakeRunners:
        runners = FakeRunners()
        b = batcher(runners)
        first = asyncio.ensure_future(b.score("v1", MEMBERS, rows(1, seed=0)))
        await turns(1)
        later = asyncio.ensure_future(b.score("v1", MEMBERS, rows(2, seed=1)))
        await asyncio.gather(first, later)
        return runners

    assert asyncio.run(run()).batches() == [3]


def test_rows_arriving_during_a_batch_form_the_next_one() -> None:
    async def run() -> FakeRunners:
        runners = FakeRunners()
        runners.hold = asyncio.Event()
        b = batcher(runners)
        first = asyncio.ensure_future(b.score("v1", MEMBERS, rows(1, seed=0)))
        await turns()
        later = [asyncio.ensure_future(b.score("v1", MEMBERS, rows(2, seed=i))) for i in range(5)]
        await turns()
        assert runners.batches() == [1]  # one batch in flight: the others wait for it, they are not sent
        assert b.queued_rows("hgb") == 10
        runners.hold.set()
        await asyncio.gather(first, *later)
        return runners

    assert asyncio.run(run()).batches() == [1, 10]


def test_batches_never_exceed_max_rows() -> None:
    async def run() -> FakeRunners:
        runners = FakeRunners()
        b = batcher(runners, max_batch_rows=8, max_queued_rows=64)
        await asyncio.gather(*(b.score("v1", MEMBERS, rows(3, seed=i)) for i in range(10)))
        return runners

    sizes = asyncio.run(run()).batches()
    assert max(sizes) <= 8 and sum(sizes) == 30


def test_mixed_versions_share_a_batch_and_each_row_is_scored_with_its_own() -> None:
    a, b_rows = rows(2, seed=1), rows(3, seed=2)

    async def run() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], FakeRunners]:
        runners = FakeRunners()
        runners.hold = asyncio.Event()
        b = batcher(runners)
        first = asyncio.ensure_future(b.score("v1", MEMBERS, rows(1, seed=0)))
        await turns()
        one = asyncio.ensure_future(b.score("v1", MEMBERS, a))
        two = asyncio.ensure_future(b.score("v2", MEMBERS, b_rows))
        await turns()
        runners.hold.set()
        await first
        return await one, await two, runners

    one, two, runners = asyncio.run(run())
    assert runners.batches() == [1, 5]
    np.testing.assert_allclose(one["hgb"], expected(a, "v1")["hgb"])
    np.testing.assert_allclose(two["logreg"], expected(b_rows, "v2")["logreg"])


def test_a_version_that_cannot_score_fails_only_its_own_requests() -> None:
    async def run() -> list[object]:
        runners = FakeRunners()
        runners.broken_codes = {version_code("broken")}
        runners.hold = asyncio.Event()
        b = batcher(runners)
        first = asyncio.ensure_future(b.score("v1", MEMBERS, rows(1, seed=0)))
        await turns()
        mixed = [
            asyncio.ensure_future(b.score("broken" if i % 2 else "v1", MEMBERS, rows(1, seed=i))) for i in range(6)
        ]
        await turns()
        runners.hold.set()
        await first
        return list(await asyncio.gather(*mixed, return_exceptions=True))

    results = asyncio.run(run())
    for i, result in enumerate(results):
        if i % 2:
            assert isinstance(result, Unavailable) and "broken" in result.message
        else:
            assert isinstance(result, dict) and set(result) == set(MEMBERS)


def test_a_failing_runner_fails_the_requests_of_its_batch_and_the_next_batch_goes_on() -> None:
    async def run() -> tuple[list[object], dict[str, np.ndarray]]:
        runners = FakeRunners()
        runners.failing = {"logreg"}
        b = batcher(runners)
        failed = await asyncio.gather(
            *(b.score("v1", MEMBERS, rows(1, seed=i)) for i in range(3)), return_exceptions=True
        )
        runners.failing = set()
        return list(failed), await b.score("v1", MEMBERS, rows(1, seed=9))

    failed, recovered = asyncio.run(run())
    assert all(isinstance(f, Unavailable) and "logreg" in f.message for f in failed)
    np.testing.assert_allclose(recovered["hgb"], expected(rows(1, seed=9), "v1")["hgb"])


def test_a_full_queue_refuses_at_once() -> None:
    async def run() -> None:
        runners = FakeRunners()
        runners.hold = asyncio.Event()
        b = batcher(runners, max_batch_rows=4, max_queued_rows=8)
        first = asyncio.ensure_future(b.score("v1", MEMBERS, rows(4, seed=0)))
        await turns()
        queued = [asyncio.ensure_future(b.score("v1", MEMBERS, rows(4, seed=i))) for i in (1, 2)]
        await turns()
        assert b.queued_rows("hgb") == 8
        with pytest.raises(Unavailable, match="is full"):
            await b.score("v1", MEMBERS, rows(1, seed=3))
        runners.hold.set()
        await asyncio.gather(first, *queued)

    asyncio.run(run())


def test_a_cancelled_caller_is_not_scored() -> None:
    async def run() -> FakeRunners:
        runners = FakeRunners()
        runners.hold = asyncio.Event()
        b = batcher(runners)
        first = asyncio.ensure_future(b.score("v1", MEMBERS, rows(1, seed=0)))
        await turns()
        gone = asyncio.ensure_future(b.score("v1", MEMBERS, rows(5, seed=1)))
        kept = asyncio.ensure_future(b.score("v1", MEMBERS, rows(2, seed=2)))
        await turns()
        gone.cancel()
        runners.hold.set()
        await asyncio.gather(first, kept)
        return runners

    assert asyncio.run(run()).batches() == [1, 2]


def test_requests_outside_the_batch_size_are_refused() -> None:
    async def run() -> None:
        b = batcher(FakeRunners(), max_batch_rows=4, max_queued_rows=8)
        with pytest.raises(ValueError, match=r"1\.\.4 rows"):
            await b.score("v1", MEMBERS, rows(5, seed=0))

    asyncio.run(run())


def test_a_stalled_member_does_not_hold_up_the_other_members() -> None:
    class StalledHgb(FakeRunners):
        async def __call__(self, member: str, coded: np.ndarray) -> np.ndarray:
            if member == "hgb":
                await asyncio.Event().wait()  # never answers, like a SIGSTOPped runner
            return await super().__call__(member, coded)

    async def run() -> dict[str, np.ndarray]:
        b = batcher(StalledHgb())
        stuck = asyncio.ensure_future(b.score("v1", MEMBERS, rows(1, seed=0)))
        await turns()
        alone = await asyncio.wait_for(b.score("v1", ("logreg",), rows(1, seed=1)), timeout=30)
        stuck.cancel()
        return alone

    np.testing.assert_allclose(asyncio.run(run())["logreg"], expected(rows(1, seed=1), "v1")["logreg"])


def test_a_request_queued_behind_a_stalled_batch_fails_at_its_own_deadline() -> None:
    """A runner that never answers: the request in flight and the one queued behind it both fail at their deadline.

    Without the per-request deadline the queued request would wait for the stalled batch first (here: forever).
    """
    runners = FakeRunners()
    runners.hold = asyncio.Event()  # never set
    rb = batcher(runners, deadline_s=0.05)

    async def scenario() -> list[BaseException | dict[str, np.ndarray]]:
        first = asyncio.ensure_future(rb.score("v1", MEMBERS, rows(1, 1)))
        await turns()
        second = asyncio.ensure_future(rb.score("v1", MEMBERS, rows(1, 2)))
        async with asyncio.timeout(5):
            return await asyncio.gather(first, second, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, Unavailable) and "did not answer within 0.05 s" in str(o) for o in outcomes), outcomes
    assert runners.batches() == [1]  # the queued request never reached the stalled runner
