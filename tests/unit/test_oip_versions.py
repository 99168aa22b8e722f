"""OIP answers name the version that scored them: policy routing, explicit versions, members, repository."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc.service_pb2 as pb  # not ours: two copies of the proto collide (test_oip_proto.py)

from fraudserve.errors import InvalidInput, NotFound
from fraudserve.inference import InferenceCore
from fraudserve.oip.codec import Tensor
from fraudserve.oip.dataplane import DataPlane, InferRequest, InferResponse, routing_key_parameter
from fraudserve.rollout.policy import Policy
from tests.unit.test_rollout_core import CountingScorer, derive_version, make_core, rows


@pytest.fixture(scope="module")
def roll_versions(trained: str) -> None:
    for version, shift in (("r1", 0.0), ("r2", 1.5)):
        derive_version(trained, version, shift=shift)


def plane_of(tmp_path: Path) -> tuple[DataPlane, InferenceCore, CountingScorer]:
    core, scorer = make_core(tmp_path)
    return DataPlane(core, ready_timeout_s=30, routing_key_max_chars=16), core, scorer


def features(n: int, seed: int = 5) -> list[Tensor]:
    return [Tensor("features", "FP64", rows(n, seed=seed))]


def infer(plane: DataPlane, model: str, version: str = "", key: str | None = None, n: int = 2) -> InferResponse:
    request = InferRequest(model, features(n), version, routing_key=key)
    return asyncio.run(plane.infer(request, transport="test"))


def test_the_answer_names_the_version_the_policy_chose(roll_versions: None, tmp_path: Path) -> None:
    plane, core, _ = plane_of(tmp_path)
    core.rollout.set_policy(Policy(kind="ab", stable="r1", candidate="r2", percent=50, salt="s"))
    by_key = {f"c{i}": infer(plane, "roll_ensemble", key=f"c{i}").model_version for i in range(30)}
    assert set(by_key.values()) == {"r1", "r2"}
    for key, version in list(by_key.items())[:10]:  # sticky: the same key, the same version
        expected = asyncio.run(core.score(rows(2), transport="test", routing_key=key))
        answer = infer(plane, "roll_ensemble", key=key)
        assert answer.model_version == version == expected.version
        np.testing.assert_allclose(answer.outputs[0].data, expected.probabilities)
    with pytest.raises(InvalidInput, match="routing_key"):
        infer(plane, "roll_ensemble", key="k" * 17)


def test_an_explicit_version_scores_that_version_without_the_policy(roll_versions: None, tmp_path: Path) -> None:
    plane, core, scorer = plane_of(tmp_path)
    core.rollout.set_policy(Policy(kind="canary", stable="r2", candidate="r2", percent=100))
    pinned = infer(plane, "roll_ensemble", "r1", n=3)
    assert pinned.model_version == "r1" and scorer.rows == {None: 3 * 3}  # r1 is the scorer's own version
    r1 = asyncio.run(core.score(rows(3), transport="test", version="r1"))
    assert r1.variant == "pinned"
    np.testing.assert_allclose(pinned.outputs[0].data, r1.probabilities)
    assert infer(plane, "roll_hgb", "r1").model_version == "r1"
    for missing in ("nope", "not a tag!"):
        with pytest.raises(NotFound, match="no version") as info:
            infer(plane, "roll_ensemble", missing)
        assert info.value.field == "model_version"
        with pytest.raises(NotFound):
            plane.model_metadata("roll_logreg", missing)


def test_members_metadata_and_index_follow_policy_changes(roll_versions: None, tmp_path: Path) -> None:
    plane, core, scorer = plane_of(tmp_path)
    assert {(e.name, e.version) for e in plane.index()} == {(n, "r1") for n in plane.repository.models}
    core.rollout.set_policy(Policy(kind="blue_green", blue="r1", green="r2", active="green"))
    member = infer(plane, "roll_iforest", n=4)
    assert member.model_version == "r2" and scorer.rows.get("r2") == 4
    assert plane.model_metadata("roll_ensemble").version == "r2"
    assert plane.model_metadata("roll_ensemble", "r1").version == "r1"
    index = [(e.name, e.version) for e in plane.index()]
    assert index[:4] == [(n, "r2") for n in plane.repository.models]  # the primary version first
    assert set(index[4:]) == {(n, "r1") for n in plane.repository.models}
    assert asyncio.run(plane.model_ready("roll_hgb", "r2"))


def test_routing_key_parameter_of_rest_and_grpc() -> None:
    assert routing_key_parameter(None) is None
    assert routing_key_parameter({"routing_key": "c-1", "binary_data_output": True}) == "c-1"
    assert routing_key_parameter({"routing_key": pb.InferParameter(string_param="c-2")}) == "c-2"
    with pytest.raises(InvalidInput, match="string"):
        routing_key_parameter({"routing_key": 5})
    with pytest.raises(InvalidInput, match="string_param"):
        routing_key_parameter({"routing_key": pb.InferParameter(int64_param=5)})
