"""Routing, shared policy, response cache and shadow of the inference core, with in-process models.

Versions live under their own prefix (``roll``) so that ``latest`` of the default ``fraud``
prefix (what other tests' servers serve) never changes. They are derived from the session's
trained ``vtest1`` instead of trained again (~40 s per training on 2 busy cores): r1 is a copy,
r2 the same members with another stack intercept (so its probabilities differ), rbroken has a
corrupted hgb artifact (its load fails the hash check), rschema another feature schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import pytest

from fraudserve.errors import Conflict, ModelStoreError
from fraudserve.inference import InferenceCore
from fraudserve.local import LocalScorer, load_local
from fraudserve.rollout import admin, state
from fraudserve.rollout.cache import ResponseCache, build_cache
from fraudserve.rollout.engine import Rollout
from fraudserve.rollout.policy import NO_KEY_NOTE, Policy, Router, ab_bucket
from fraudserve.rollout.state import PolicyDoc, SharedPolicyFile
from fraudserve.settings import Settings
from fraudserve.stream.local_redis import LocalRedis
from models import registry, store
from models.transactions import generate_transactions

PREFIX = "roll"


def derive_version(source: str, version: str, *, shift: float = 0.0, corrupt: bool = False, schema: str = "") -> str:
    """Save ``fraud:<source>``'s members under ``roll:<version>``; idempotent."""
    try:
        bentoml.models.get(f"{PREFIX}_ensemble:{version}")
        return version
    except bentoml.exceptions.NotFound:
        pass
    spec = store.load_ensemble("fraud", source)
    for member in spec.members:
        model = bentoml.models.get(spec.tag(member))
        meta = {k: v for k, v in model.info.metadata.items() if k != "sha256"} | ({"schema": schema} if schema else {})
        tag = store.save_member(PREFIX, member, version, store.load_member(model), meta)
        if corrupt and member == "hgb":
            with (Path(bentoml.models.get(tag).path) / store.ARTIFACT).open("ab") as fh:
                fh.write(b"tampered")
    ensemble = bentoml.models.get(f"fraud_ensemble:{spec.version}")
    meta = {k: v for k, v in ensemble.info.metadata.items() if k != "sha256"} | ({"schema": schema} if schema else {})
    combiner = {
        "members": list(spec.members),
        "weights": spec.weights,
        "links": spec.links,
        "intercept": spec.intercept + shift,
        "threshold": spec.threshold,
    }
    store.save_ensemble(PREFIX, version, combiner, meta)
    return version


def other_schema() -> str:
    spec = store.load_ensemble("fraud", "vtest1")
    return spec.schema.model_copy(update={"features": spec.schema.features[1:]}).model_dump_json(exclude_none=True)


@pytest.fixture(scope="module")
def versions(trained: str) -> dict[str, str]:
    return {
        "r1": derive_version(trained, "r1"),
        "r2": derive_version(trained, "r2", shift=1.5),
        "rbroken": derive_version(trained, "rbroken", corrupt=True),
        "rschema": derive_version(trained, "rschema", schema=other_schema()),
    }


@pytest.fixture
def clean_registry(versions: dict[str, str]) -> Iterator[None]:
    registry.registry_path(PREFIX).unlink(missing_ok=True)
    yield
    registry.registry_path(PREFIX).unlink(missing_ok=True)


def rows(n: int, seed: int = 5) -> np.ndarray:
    spec = store.load_ensemble(PREFIX, "r1")
    records = generate_transactions(n, seed=seed).drop(columns="is_fraud").to_dict("records")
    return spec.schema.encode_records(records)


class CountingScorer:
    """The real in-process scorer, counting rows scored per version; can fail or stall one version."""

    def __init__(self, inner: LocalScorer, *, fail: str | None = None, stall_s: dict[str, float] | None = None):
        self.inner = inner
        self.rows: dict[str | None, int] = {}
        self.fail = fail
        self.stall_s = stall_s or {}

    async def __call__(self, member: str, features: np.ndarray, *, bulk: bool, version: str | None = None):
        if version is not None and version == self.fail:
            raise ModelStoreError(f"{version} is broken")
        if version in self.stall_s:
            await asyncio.sleep(self.stall_s[version])
        self.rows[version] = self.rows.get(version, 0) + len(features)
        return await self.inner(member, features, bulk=bulk, version=version)


def make_core(
    tmp_path: Path,
    *,
    cache: bool = True,
    fail: str | None = None,
    stall_s: dict[str, float] | None = None,
    shadow_timeout_s: float = 30.0,
) -> tuple[InferenceCore, CountingScorer]:
    spec, local = load_local(Settings(model_prefix=PREFIX, model_version="r1"))
    scorer = CountingScorer(local, fail=fail, stall_s=stall_s)
    rollout = Rollout(
        spec,
        shared=SharedPolicyFile(tmp_path / "policy.json", refresh_s=0.0),
        cache=ResponseCache(1000, 60.0) if cache else None,
        shadow_timeout_s=shadow_timeout_s,
    )
    return InferenceCore(spec, scorer, max_rows=100, bulk_rows_threshold=10, rollout=rollout), scorer


def test_canary_split_within_tolerance() -> None:
    router = Router(Policy(kind="canary", candidate="x", percent=20), {"stable": "v1", "candidate": "v2"})
    router._rng = random.Random(3)
    served = [router.route(None).variant for _ in range(10_000)]
    share = served.count("canary") / len(served)
    assert 0.18 < share < 0.22  # 20% +- 5 standard deviations (0.4%)
    assert set(served) == {"canary", "stable"}


def test_ab_is_sticky_per_key_and_split_by_percent() -> None:
    versions = {"stable": "v1", "candidate": "v2"}
    policy = Policy(kind="ab", candidate="x", percent=30, salt="exp-1")
    first, second = Router(policy, versions), Router(policy, versions)  # two workers
    keys = [f"customer-{i}" for i in range(4000)]
    variants = [first.route(k).variant for k in keys]
    assert variants == [second.route(k).variant for k in keys] == [first.route(k).variant for k in keys]
    assert 0.27 < variants.count("b") / len(keys) < 0.33
    unkeyed = first.route(None)
    assert (unkeyed.variant, unkeyed.version, unkeyed.note) == ("a_unkeyed", "v1", NO_KEY_NOTE)
    # A new salt is a new experiment: a different (but again sticky) assignment.
    assert ab_bucket("exp-1", "customer-1") != ab_bucket("exp-2", "customer-1")


def test_policy_validation_names_the_problem() -> None:
    with pytest.raises(ValueError, match="needs `candidate`"):
        Policy(kind="canary", percent=5)
    with pytest.raises(ValueError, match="needs `blue` and `green`"):
        Policy(kind="blue_green", blue="v1")
    with pytest.raises(ValueError, match="less than or equal to 100"):
        Policy(kind="canary", candidate="v2", percent=101)


def test_responses_name_the_version_and_variant(versions: dict[str, str], tmp_path: Path) -> None:
    core, _ = make_core(tmp_path)
    core.rollout.set_policy(Policy(kind="ab", stable="r1", candidate="r2", percent=50))
    by_variant = {}
    for i in range(40):
        scored = asyncio.run(core.score(rows(1, seed=i), transport="test", routing_key=f"c{i}"))
        by_variant[scored.variant] = scored
    assert set(by_variant) == {"a", "b"}
    assert by_variant["a"].to_response().predictions[0].model_version == "r1"
    assert by_variant["b"].to_response().model_versions["ensemble"] == "roll_ensemble:r2"
    unkeyed = asyncio.run(core.score(rows(1), transport="test")).to_response()
    assert unkeyed.routing_note == NO_KEY_NOTE and unkeyed.predictions[0].variant == "a_unkeyed"


def test_blue_green_switch_and_rollback_shared_by_workers(versions: dict[str, str], tmp_path: Path) -> None:
    worker1, _ = make_core(tmp_path)
    worker2, _ = make_core(tmp_path)  # another API worker on the same shared policy file
    features = rows(3)
    worker1.rollout.set_policy(Policy(kind="blue_green", blue="r1", green="r2", active="blue"))
    worker1.rollout.set_policy(Policy(kind="blue_green", blue="r1", green="r2", active="green"))
    assert asyncio.run(worker2.score(features, transport="test")).version == "r2"
    worker2.rollout.rollback()
    assert asyncio.run(worker1.score(features, transport="test")).version == "r1"
    assert worker1.rollout.router.policy.active == "blue"
    saved = json.loads((tmp_path / "policy.json").read_text())
    assert saved["current"]["active"] == "blue" and saved["previous"]["active"] == "green"
    assert saved["reason"] == "rollback"


def test_bad_policies_are_refused_and_change_nothing(versions: dict[str, str], tmp_path: Path) -> None:
    core, _ = make_core(tmp_path)
    with pytest.raises(Conflict, match="another feature schema") as schema:
        core.rollout.set_policy(Policy(kind="canary", stable="r1", candidate="rschema", percent=10))
    assert schema.value.field == "policy.candidate"
    with pytest.raises(Conflict, match="no model roll_ensemble:nope"):
        core.rollout.set_policy(Policy(kind="shadow", stable="r1", candidate="nope"))
    assert core.rollout.router.policy.kind == "single"
    with pytest.raises(Conflict, match="no previous policy"):
        core.rollout.rollback()


def test_cache_hits_on_repeats_and_misses_after_a_version_change(versions: dict[str, str], tmp_path: Path) -> None:
    core, scorer = make_core(tmp_path)
    features = rows(5)
    first = asyncio.run(core.score(features, transport="test"))
    again = asyncio.run(core.score(features[[4, 0, 2]], transport="test"))
    assert scorer.rows == {None: 5 * 3}  # 3 members x 5 rows, the repeats were not scored again
    np.testing.assert_allclose(again.probabilities, first.probabilities[[4, 0, 2]])
    assert core.rollout.cache is not None and core.rollout.cache.stats()["hits"] == 3
    core.rollout.set_policy(Policy(kind="single", stable="r2"))
    changed = asyncio.run(core.score(features, transport="test"))
    assert scorer.rows == {None: 15, "r2": 15} and changed.version == "r2"
    assert not np.allclose(changed.probabilities, first.probabilities)


def test_cache_ttl_lru_and_canonical_keys() -> None:
    now = [0.0]
    cache = ResponseCache(2, ttl_s=10.0, clock=lambda: now[0])
    a, b, c = np.array([[1.0, -0.0]]), np.array([[2.0, 0.0]]), np.array([[3.0, 0.0]])
    cache.put_many(cache.keys("v1", a), np.array([[0.1]]))
    assert cache.get_many(cache.keys("v1", np.array([[1.0, 0.0]])))[0] is not None  # -0.0 == 0.0
    assert cache.get_many(cache.keys("v2", a)) == [None]  # keyed by version
    cache.put_many(cache.keys("v1", b), np.array([[0.2]]))
    cache.put_many(cache.keys("v1", c), np.array([[0.3]]))
    assert cache.get_many(cache.keys("v1", a)) == [None] and len(cache) == 2  # least recently used went
    now[0] = 11.0
    assert cache.get_many(cache.keys("v1", c)) == [None]  # expired


def test_redis_cache_is_shared_by_workers_and_follows_the_policy(versions: dict[str, str], tmp_path: Path) -> None:
    def worker(url: str) -> tuple[InferenceCore, CountingScorer]:
        settings = Settings(
            model_prefix=PREFIX, model_version="r1", cache_enabled=True, cache_backend="redis", cache_redis_url=url
        )
        spec, local = load_local(settings)
        scorer = CountingScorer(local)
        rollout = Rollout(
            spec, shared=SharedPolicyFile(tmp_path / "policy.json", refresh_s=0.0), cache=build_cache(settings)
        )
        return InferenceCore(spec, scorer, max_rows=100, bulk_rows_threshold=10, rollout=rollout), scorer

    async def run(server: LocalRedis) -> None:
        (core1, scorer1), (core2, scorer2) = worker(server.url), worker(server.url)
        features = rows(6)
        try:
            first = await core1.score(features, transport="test")
            second = await core2.score(features, transport="test")  # another worker: all from Redis
            assert scorer1.rows == {None: 6 * 3} and scorer2.rows == {}
            np.testing.assert_array_equal(second.probabilities, first.probabilities)
            core1.rollout.set_policy(Policy(kind="single", stable="r1"))  # same version, a new revision
            await core2.score(features, transport="test")
            assert scorer2.rows == {None: 6 * 3}  # core2 adopted it: a miss in both levels
            server.stop()
            scored = await core1.score(rows(4, seed=9), transport="test")  # Redis gone: scored anyway
            assert len(scored.probabilities) == 4
            assert core1.rollout.cache is not None and core1.rollout.cache.stats()["redis"] == {
                "hits": 0,
                "misses": 6 + 4,
                "errors": 1,
            }
        finally:
            for core in (core1, core2):
                if core.rollout.cache is not None and core.rollout.cache.shared is not None:
                    await core.rollout.cache.shared.aclose()

    with LocalRedis() as server:
        asyncio.run(run(server))


def test_shadow_failure_and_slowness_never_reach_the_caller(versions: dict[str, str], tmp_path: Path) -> None:
    core, scorer = make_core(tmp_path, fail="rbroken", stall_s={"r2": 30.0}, shadow_timeout_s=1.0)

    async def run(candidate: str) -> list[float]:
        core.rollout.set_policy(Policy(kind="shadow", stable="r1", candidate=candidate))
        started = asyncio.get_running_loop().time()
        scored = await core.score(rows(4), transport="test")
        elapsed = asyncio.get_running_loop().time() - started
        await core.rollout.drain_shadows()
        assert scored.version == "r1" and scored.variant == "stable"
        return [elapsed]

    assert asyncio.run(run("rbroken"))[0] < 10.0
    assert asyncio.run(run("r2"))[0] < 10.0  # the shadow stalls 30 s (timeout 1 s): the caller did not wait
    assert core.rollout.shadow_rows == {"error": 4, "timeout": 4}
    assert "r2" not in scorer.rows


def test_shadow_compares_decisions_without_the_cache(versions: dict[str, str], tmp_path: Path) -> None:
    core, scorer = make_core(tmp_path)
    core.rollout.set_policy(Policy(kind="shadow", stable="r1", candidate="r2"))

    async def twice() -> None:
        for _ in range(2):
            await core.score(rows(20), transport="test")
            await core.rollout.drain_shadows()

    asyncio.run(twice())
    assert scorer.rows == {None: 20 * 3, "r2": 2 * 20 * 3}  # served from the cache once, shadow scored twice
    counts = core.rollout.shadow_rows
    assert counts["agree"] + counts["disagree"] == 40
    assert core.rollout.cache is not None and all(key[0] == "r1" for key in core.rollout.cache._rows)


def test_registry_aliases_drive_reload(versions: dict[str, str], clean_registry: None, tmp_path: Path) -> None:
    assert store.resolve_version(PREFIX, "stable") == "rschema"  # no registry yet: the newest ensemble
    registry.promote(PREFIX, "r1", "stable")
    core, _ = make_core(tmp_path)
    core.rollout.set_policy(Policy(kind="single", stable="stable"))
    assert core.rollout.router.versions == {"stable": "r1"}
    registry.promote(PREFIX, "r2", "stable")
    assert core.rollout.router.versions == {"stable": "r1"}  # resolved at apply time only
    core.rollout.reload()
    assert asyncio.run(core.score(rows(2), transport="test")).version == "r2"
    registry.rollback(PREFIX, "stable")
    core.rollout.reload()
    assert asyncio.run(core.score(rows(2), transport="test")).version == "r1"


def test_a_policy_whose_member_cannot_score_is_refused_before_it_applies(
    versions: dict[str, str], tmp_path: Path
) -> None:
    core, _ = make_core(tmp_path)  # the real in-process scorer: rbroken's hgb fails its hash check
    asyncio.run(admin.set_policy(core, Policy(kind="single", stable="r2")))
    for policy in (
        Policy(kind="canary", stable="r2", candidate="rbroken", percent=10),
        Policy(kind="shadow", stable="r2", candidate="rbroken"),  # a shadow that cannot score compares nothing
    ):
        with pytest.raises(Conflict, match=r"candidate version rbroken: hgb: .*sha256") as refused:
            asyncio.run(admin.set_policy(core, policy))
        assert refused.value.http_status == 409 and refused.value.field == "policy"
    assert core.rollout.router.versions == {"stable": "r2"}
    assert asyncio.run(core.score(rows(3), transport="test")).version == "r2"
    saved = json.loads((tmp_path / "policy.json").read_text())
    assert (saved["current"]["stable"], saved["previous"]["stable"]) == ("r2", "r1")
    rolled = asyncio.run(admin.rollback(core))  # the refused changes left the previous policy alone
    assert rolled["versions"] == {"stable": "r1"} and rolled["warm_up"] == {"r1": "ok"}


def test_concurrent_policy_writes_have_one_winner_and_every_worker_converges(
    versions: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker1, _ = make_core(tmp_path)
    worker2, _ = make_core(tmp_path)
    both_read = threading.Barrier(2, timeout=1.0)
    real_write = state.write_json_atomic

    def write_after_both_read(path: Path, data: object) -> None:
        # Both writers have read the shared file by now, unless the write is serialised (then this times out).
        with contextlib.suppress(threading.BrokenBarrierError):
            both_read.wait()
        real_write(path, data)

    monkeypatch.setattr(state, "write_json_atomic", write_after_both_read)
    outcomes: dict[str, str] = {}

    def change(name: str, core: InferenceCore, policy: Policy) -> None:
        try:
            outcomes[name] = f"applied revision {core.rollout.set_policy(policy)['revision']}"
        except Conflict:
            outcomes[name] = "conflict"

    threads = [
        threading.Thread(target=change, args=("w1", worker1, Policy(kind="single", stable="r1"))),
        threading.Thread(target=change, args=("w2", worker2, Policy(kind="single", stable="r2"))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes.values()) == ["applied revision 1", "conflict"], outcomes
    for core in (worker1, worker2):
        core.rollout.refresh()
    winner = worker1 if outcomes["w1"] != "conflict" else worker2
    assert worker1.rollout.router.versions == worker2.rollout.router.versions == winner.rollout.router.versions
    assert worker1.rollout.revision == worker2.rollout.revision == 1
    assert json.loads((tmp_path / "policy.json").read_text())["revision"] == 1


def _commit_from_another_process(path: str, stable: str, start: Any, results: Any) -> None:
    shared = SharedPolicyFile(Path(path), refresh_s=0.0)
    start.wait()
    try:
        shared.commit(PolicyDoc(Policy(kind="single", stable=stable), revision=1), expected_revision=None)
        results.put(stable)
    except Conflict:
        results.put("conflict")


def test_compare_and_swap_across_processes_has_exactly_one_winner(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(4), context.Queue()
    procs = [
        context.Process(target=_commit_from_another_process, args=(str(tmp_path / "p.json"), f"v{i}", start, results))
        for i in range(4)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    outcomes = sorted(results.get(timeout=5) for _ in procs)
    assert outcomes.count("conflict") == 3, outcomes
    (winner,) = (o for o in outcomes if o != "conflict")
    assert json.loads((tmp_path / "p.json").read_text())["current"]["stable"] == winner


def test_workers_starting_with_a_policy_file_apply_it_once(versions: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "policy.yaml"
    config.write_text("kind: canary\nstable: r1\ncandidate: r2\npercent: 10\n")
    settings = Settings(
        model_prefix=PREFIX, model_version="r1", policy_file=config, policy_state_file=tmp_path / "state.json"
    )
    spec = store.load_ensemble(PREFIX, "r1")
    first, second = Rollout.from_settings(spec, settings), Rollout.from_settings(spec, settings)
    assert first.revision == second.revision == 1
    assert first.router.versions == second.router.versions == {"stable": "r1", "candidate": "r2"}
    first.set_policy(Policy(kind="single", stable="r2"))
    restarted = Rollout.from_settings(spec, settings)  # the config did not change: the admin's change stays
    assert (restarted.revision, restarted.router.versions) == (2, {"stable": "r2"})
