"""The shared readiness probe: single flight, a short cache, per-member states, listeners."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping

from fraudserve.readiness import ReadinessProbe

MEMBERS = ("hgb", "logreg", "iforest")


class FakeScorer:
    """Counts scoring calls per member; a call waits until ``release`` is set; ``down`` members fail."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.release = asyncio.Event()
        self.down: set[str] = set()

    async def __call__(self, member: str) -> object:
        self.calls[member] += 1
        await self.release.wait()
        if member in self.down:
            raise ConnectionError(f"{member} is down")
        return [0.5]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_concurrent_probes_share_one_scoring_call_until_the_cache_expires() -> None:
    async def scenario() -> None:
        scorer, clock = FakeScorer(), Clock()
        probe = ReadinessProbe(MEMBERS, scorer, timeout_s=5, cache_s=1.0, clock=clock)
        waiting = [asyncio.create_task(probe.ready()) for _ in range(50)]
        waiting += [asyncio.create_task(probe.ready("hgb")) for _ in range(10)]
        await asyncio.sleep(0)
        scorer.release.set()
        assert all(await asyncio.gather(*waiting))
        assert scorer.calls == dict.fromkeys(MEMBERS, 1)

        clock.now += 0.9  # within the cache: no new call
        assert await probe.ready() and await probe.ready("iforest")
        assert scorer.calls == dict.fromkeys(MEMBERS, 1)

        clock.now += 0.2  # past it: one new round
        scorer.down.add("hgb")
        results = await asyncio.gather(*(probe.ready() for _ in range(20)))
        assert results == [False] * 20
        assert scorer.calls == dict.fromkeys(MEMBERS, 2)
        assert await probe.states() == {"hgb": False, "logreg": True, "iforest": True}
        assert not await probe.ready("hgb") and await probe.ready("logreg")

    asyncio.run(scenario())


def test_a_stalled_member_times_out_and_a_leaving_caller_does_not_cancel_the_round() -> None:
    async def scenario() -> None:
        scorer = FakeScorer()
        probe = ReadinessProbe(MEMBERS, scorer, timeout_s=0.05, cache_s=10.0)
        impatient = asyncio.create_task(probe.ready())
        patient = asyncio.create_task(probe.ready())
        await asyncio.sleep(0)
        impatient.cancel()
        assert await patient is False  # every member timed out (release never set)
        assert impatient.cancelled()
        assert scorer.calls == dict.fromkeys(MEMBERS, 1)

    asyncio.run(scenario())


def test_listeners_see_every_round_and_cannot_break_it() -> None:
    async def scenario() -> None:
        scorer = FakeScorer()
        scorer.release.set()
        probe = ReadinessProbe(MEMBERS, scorer, timeout_s=5, cache_s=0.0)
        seen: list[dict[str, bool]] = []

        async def record(states: Mapping[str, bool]) -> None:
            seen.append(dict(states))

        async def broken(states: Mapping[str, bool]) -> None:
            raise RuntimeError("listener bug")

        probe.on_result(broken)
        probe.on_result(record)
        assert await probe.ready()
        scorer.down.add("logreg")
        assert not await probe.ready()
        assert seen == [dict.fromkeys(MEMBERS, True), {"hgb": True, "logreg": False, "iforest": True}]

    asyncio.run(scenario())


def test_liveness_fails_only_after_the_runners_stayed_unready_for_the_grace() -> None:
    async def scenario() -> None:
        scorer, clock = FakeScorer(), Clock()
        scorer.release.set()
        probe = ReadinessProbe(MEMBERS, scorer, timeout_s=5, cache_s=1.0, clock=clock)
        assert await probe.alive(60)
        scorer.down = {"hgb"}
        clock.now += 2
        assert not await probe.ready() and await probe.alive(60)  # unready, but not for long
        clock.now += 57  # 59 s since the last ready round
        assert await probe.alive(60)
        clock.now += 2
        assert not await probe.alive(60)
        assert await probe.alive(0)  # 0 turns the check off
        scorer.down = set()
        clock.now += 2
        assert await probe.alive(60)  # one ready round and it is alive again

    asyncio.run(scenario())
