"""OIP tensors <-> feature matrix, and the transport-free data plane over the real in-process models."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fraudserve.errors import InvalidInput, NotFound, PayloadTooLarge
from fraudserve.inference import InferenceCore
from fraudserve.local import load_local
from fraudserve.oip import codec, dataplane
from fraudserve.oip.codec import (
    Tensor,
    WireTensor,
    check_inputs,
    features_matrix,
    json_values,
    raw_bytes,
    select_outputs,
    tensor_from_raw,
    tensor_from_values,
)
from fraudserve.oip.dataplane import DataPlane, InferRequest, InferResponse
from fraudserve.settings import Settings
from models.transactions import TRANSACTION_SCHEMA, generate_transactions

SCHEMA = TRANSACTION_SCHEMA


def frame(n: int, seed: int = 4) -> pd.DataFrame:
    return generate_transactions(n, seed=seed).drop(columns="is_fraud")


def per_feature(df: pd.DataFrame, *, column: bool = False) -> list[Tensor]:
    """One tensor per feature, typed as model metadata advertises."""
    tensors = []
    for f in SCHEMA.features:
        values = df[f.name].tolist()
        datatype = {"float": "FP64", "int": "INT64", "bool": "BOOL", "category": "BYTES"}[f.kind]
        shape = [len(values), 1] if column else [len(values)]
        tensors.append(tensor_from_values(f.name, datatype, shape, values))
    return tensors


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return df.to_dict("records")  # type: ignore[return-value]


@pytest.mark.parametrize("column", [False, True])
def test_per_feature_tensors_encode_like_records(column: bool) -> None:
    df = frame(7)
    matrix, prefix = features_matrix(SCHEMA, per_feature(df, column=column))
    assert prefix == "inputs"
    np.testing.assert_array_equal(matrix, SCHEMA.encode_records(records(df)))


def test_single_features_tensor_takes_encoded_values() -> None:
    encoded = SCHEMA.encode_records(records(frame(3)))
    tensor = tensor_from_values("features", "FP32", list(encoded.shape), encoded.astype(np.float32).tolist())
    matrix, prefix = features_matrix(SCHEMA, [tensor])
    assert prefix == "features"
    np.testing.assert_allclose(matrix, encoded, rtol=1e-6)


@pytest.mark.parametrize(
    ("datatype", "values"),
    [
        ("FP64", [0.5, -1.25, 3.0]),
        ("FP32", [0.5, -1.25, 3.0]),
        ("INT64", [1, -2, 2**40]),
        ("INT32", [1, -2, 7]),
        ("UINT8", [0, 1, 255]),
        ("BOOL", [True, False, True]),
        ("BYTES", ["grocery", "", "caf\u00e9"]),
    ],
)
def test_raw_round_trip_matches_json(datatype: str, values: list[Any]) -> None:
    from_json = tensor_from_values("x", datatype, [3], values)
    from_raw = tensor_from_raw("x", datatype, [3], raw_bytes(from_json))
    assert from_raw.datatype == datatype
    assert json_values(from_raw) == json_values(from_json)


def test_nested_json_data_and_shape_checks() -> None:
    assert tensor_from_values("x", "INT64", [2, 2], [[1, 2], [3, 4]]).shape == [2, 2]
    with pytest.raises(InvalidInput, match="holds 3 elements, data has 4") as info:
        tensor_from_values("x", "INT64", [3], [1, 2, 3, 4])
    assert info.value.field == "x"
    with pytest.raises(InvalidInput, match="ragged"):
        tensor_from_values("x", "FP64", [3], [[1.0], [2.0, 3.0]])
    with pytest.raises(InvalidInput, match="not INT64"):
        tensor_from_values("x", "INT64", [2], [1.5, 2.0])
    with pytest.raises(InvalidInput, match="overflow INT32"):
        tensor_from_values("x", "INT32", [1], [2**40])
    with pytest.raises(InvalidInput, match="not BOOL"):
        tensor_from_values("x", "BOOL", [1], [1])
    with pytest.raises(InvalidInput, match="unknown datatype"):
        tensor_from_values("x", "FLOAT", [1], [1.0])
    with pytest.raises(InvalidInput, match="whole number"):
        tensor_from_raw("x", "FP64", [1], b"\x00" * 7)
    with pytest.raises(InvalidInput, match="truncated"):
        tensor_from_raw("x", "BYTES", [1], b"\x05\x00\x00\x00ab")


def swap(tensor: Tensor) -> Any:
    return lambda ts: [tensor if t.name == tensor.name else t for t in ts]


@pytest.mark.parametrize(
    ("change", "field", "text"),
    [
        (lambda ts: ts[1:], "amount", "missing input"),
        (lambda ts: [*ts, tensor_from_values("colour", "FP64", [2], [1.0, 2.0])], "colour", "unknown input"),
        (lambda ts: [*ts, ts[0]], "amount", "twice"),
        (swap(tensor_from_values("amount", "BYTES", [2], ["1", "2"])), "amount", "must be one of"),
        (swap(tensor_from_values("merchant_category", "FP64", [2], [0.0, 1.0])), "merchant_category", "must be one"),
        (swap(tensor_from_values("hour", "INT64", [1, 2], [1, 2])), "hour", r"shape \[n\] or \[n, 1\]"),
        (swap(tensor_from_values("hour", "INT64", [3], [1, 2, 3])), "inputs", "same number of rows"),
    ],
)
def test_bad_inputs_name_the_input(change: Any, field: str, text: str) -> None:
    with pytest.raises(InvalidInput, match=text) as info:
        features_matrix(SCHEMA, change(per_feature(frame(2))))
    assert info.value.field == field


def test_unknown_category_names_input_and_row() -> None:
    df = frame(3)
    df.loc[2, "merchant_category"] = "casino"
    with pytest.raises(InvalidInput, match="casino") as info:
        features_matrix(SCHEMA, per_feature(df))
    assert info.value.field == "merchant_category[2]"


def test_features_tensor_shape_and_type() -> None:
    with pytest.raises(InvalidInput, match=r"shape \[n, 10\]"):
        features_matrix(SCHEMA, [tensor_from_values("features", "FP64", [2, 3], [0.0] * 6)])
    with pytest.raises(InvalidInput, match="FP64 or FP32"):
        features_matrix(SCHEMA, [tensor_from_values("features", "INT64", [1, 10], [0] * 10)])


def test_select_outputs_keeps_request_order_and_rejects_unknown() -> None:
    columns = {"a": 1, "b": 2}
    assert select_outputs(columns, None, model_name="m") == [1, 2]
    assert select_outputs(columns, ["b", "a"], model_name="m") == [2, 1]
    with pytest.raises(InvalidInput, match="no output 'c'"):
        select_outputs(columns, ["c"], model_name="m")


@pytest.fixture(scope="module")
def plane(trained: str) -> DataPlane:
    spec, scorer = load_local(Settings(model_version=trained))
    return DataPlane(InferenceCore(spec, scorer, max_rows=100, bulk_rows_threshold=10), ready_timeout_s=5)


def test_ensemble_infer_equals_the_core(plane: DataPlane) -> None:
    df = frame(12)
    response = asyncio.run(plane.infer(InferRequest("fraud_ensemble", per_feature(df), id="r-1"), transport="test"))
    expected = asyncio.run(plane.core.predict(records(df), transport="test"))
    assert (response.model_name, response.model_version, response.id) == (
        "fraud_ensemble",
        plane.core.spec.version,
        "r-1",
    )
    out = {t.name: t for t in response.outputs}
    assert list(out) == ["fraud_probability", "is_fraud", "hgb_score", "logreg_score", "iforest_score"]
    np.testing.assert_allclose(out["fraud_probability"].data, expected.probabilities)
    np.testing.assert_array_equal(out["is_fraud"].data, expected.decisions)
    np.testing.assert_allclose(out["iforest_score"].data, expected.member_scores["iforest"])


def test_member_infer_scores_only_that_member(plane: DataPlane) -> None:
    df = frame(5)
    response = asyncio.run(plane.infer(InferRequest("fraud_logreg", per_feature(df)), transport="test"))
    expected = asyncio.run(plane.core.predict(records(df), transport="test"))
    [tensor] = response.outputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("logreg_score", "FP64", [5])
    np.testing.assert_allclose(tensor.data, expected.member_scores["logreg"])


def test_infer_selection_versions_and_value_errors(plane: DataPlane) -> None:
    df = frame(3)
    version = plane.core.spec.version
    picked = asyncio.run(
        plane.infer(InferRequest("fraud_ensemble", per_feature(df), version, outputs=["is_fraud"]), transport="test")
    )
    assert [t.name for t in picked.outputs] == ["is_fraud"]
    with pytest.raises(NotFound, match="no version 'v0'"):
        asyncio.run(plane.infer(InferRequest("fraud_ensemble", per_feature(df), "v0"), transport="test"))
    with pytest.raises(NotFound, match="unknown model"):
        asyncio.run(plane.infer(InferRequest("fraud_xgb", per_feature(df)), transport="test"))
    with pytest.raises(InvalidInput, match="no output"):
        asyncio.run(plane.infer(InferRequest("fraud_hgb", per_feature(df), outputs=["is_fraud"]), transport="test"))
    df.loc[1, "hour"] = 24
    with pytest.raises(InvalidInput) as info:
        asyncio.run(plane.infer(InferRequest("fraud_ensemble", per_feature(df)), transport="test"))
    assert info.value.field == "inputs[1].hour"


def test_metadata_and_readiness(plane: DataPlane) -> None:
    names = [e.name for e in plane.index()]
    assert names == ["fraud_ensemble", "fraud_hgb", "fraud_logreg", "fraud_iforest"]
    entry = plane.model_metadata("fraud_ensemble")
    assert [(s.name, s.datatype) for s in entry.inputs][:3] == [
        ("amount", "FP64"),
        ("hour", "INT64"),
        ("merchant_category", "BYTES"),
    ]
    assert entry.platform == "sklearn_ensemble"
    assert plane.model_metadata("fraud_iforest").outputs[0].name == "iforest_score"
    assert asyncio.run(plane.ready())
    assert asyncio.run(plane.model_ready("fraud_hgb", plane.core.spec.version))


def wire(df: pd.DataFrame, *, rows: int | None = None) -> list[WireTensor]:
    """``per_feature`` as a transport hands it over: raw bytes, undecoded (``rows`` overrides the shape)."""
    return [
        WireTensor(t.name, t.datatype, (rows if rows is not None else len(df),), raw=raw_bytes(t))
        for t in per_feature(df)
    ]


def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every decoder of tensor content fails the test; returns the names it was called for."""
    called: list[str] = []

    def fail(name: str, *args: Any, **kwargs: Any) -> Any:
        called.append(name)
        raise AssertionError(f"decoded {name!r}")

    for decoder in ("_split_bytes", "tensor_from_raw", "tensor_from_values", "_flatten"):
        monkeypatch.setattr(codec, decoder, fail)
    return called


def test_row_cap_is_checked_before_any_content_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    df = frame(101)
    inputs = wire(df)
    called = forbid_decoding(monkeypatch)
    with pytest.raises(PayloadTooLarge, match="101 rows exceed the limit of 100") as info:
        check_inputs(inputs, max_rows=100)
    assert info.value.field == "amount"
    # JSON / typed-contents values too, and a lying shape over a small payload.
    values = [WireTensor("merchant_category", "BYTES", (10**6,), values=["grocery"] * 10**6)]
    with pytest.raises(PayloadTooLarge):
        check_inputs(values, max_rows=100)
    assert called == []


def test_header_checks_need_no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    called = forbid_decoding(monkeypatch)
    cases = [
        (WireTensor("c", "BYTES", (3,), raw=b"\x00" * 11), "more than 11 bytes of BYTES data"),
        (WireTensor("x", "FP64", (3,), raw=b"\x00" * 16), "holds 3 elements, data has 2"),
        (WireTensor("x", "FP64", (1,), raw=b"\x00" * 7), "whole number"),
        (WireTensor("x", "INT64", (2,), values=[1, 2, 3]), "holds 2 elements, data has 3"),
        (WireTensor("x", "INT64", (-1,), values=[]), "negative dimension"),
        (WireTensor("x", "FLOAT", (1,), values=[1.0]), "unknown datatype"),
    ]
    for tensor, text in cases:
        with pytest.raises(InvalidInput, match=text):
            check_inputs([tensor], max_rows=100)
    assert called == []


def test_bytes_splitting_stops_past_the_declared_elements() -> None:
    tensor = tensor_from_values("c", "BYTES", [4], ["a", "b", "c", "d"])
    raw = raw_bytes(tensor) * 1000
    with pytest.raises(InvalidInput, match="holds 2 elements, data has 3"):
        tensor_from_raw("c", "BYTES", [2], raw)


def test_an_oversized_request_is_refused_by_the_plane_without_decoding(
    plane: DataPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = wire(frame(101))
    called = forbid_decoding(monkeypatch)
    with pytest.raises(PayloadTooLarge):
        asyncio.run(plane.infer(InferRequest("fraud_ensemble", inputs), transport="test"))
    assert called == []


def test_large_requests_are_decoded_off_the_event_loop(plane: DataPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large decode runs in a worker thread; a small request is answered while it is held there."""
    offloading = DataPlane(plane.core, ready_timeout_s=5, offload_bytes=4096)
    large, small = wire(frame(100, seed=5)), wire(frame(1, seed=6))
    assert codec.payload_bytes(large) > offloading.offload_bytes >= codec.payload_bytes(small)
    decode = codec.decode_matrix
    threads: dict[int, str] = {}
    small_done = threading.Event()

    def tracking(schema: Any, inputs: Any) -> Any:
        threads[len(inputs[0].raw)] = threading.current_thread().name
        if inputs is large:
            assert small_done.wait(10), "the small request waited for the large decode"
        return decode(schema, inputs)

    monkeypatch.setattr(dataplane, "decode_matrix", tracking)

    async def scenario() -> tuple[InferResponse, InferResponse]:
        big = asyncio.create_task(offloading.infer(InferRequest("fraud_ensemble", large), transport="test"))
        await asyncio.sleep(0)
        little = await offloading.infer(InferRequest("fraud_ensemble", small), transport="test")
        small_done.set()
        return await big, little

    big, little = asyncio.run(scenario())
    assert big.outputs[0].shape == [100] and little.outputs[0].shape == [1]
    assert threads[len(small[0].raw)] == "MainThread"
    assert threads[len(large[0].raw)] != "MainThread"


def test_concurrent_readiness_probes_share_one_scoring_call(trained: str) -> None:
    spec, scorer = load_local(Settings(model_version=trained))
    calls: list[str] = []

    async def counting(member: str, features: np.ndarray, *, bulk: bool) -> np.ndarray:
        calls.append(member)
        await asyncio.sleep(0.01)
        return await scorer(member, features, bulk=bulk)

    probed = DataPlane(InferenceCore(spec, counting, max_rows=100, bulk_rows_threshold=10), ready_timeout_s=5)

    async def scenario() -> list[bool]:
        probes = [probed.ready() for _ in range(20)] + [probed.model_ready("fraud_hgb") for _ in range(20)]
        return await asyncio.gather(*probes)

    assert all(asyncio.run(scenario()))
    assert sorted(calls) == sorted(spec.members)
    states = asyncio.run(probed.model_states())
    assert [(m.entry.name, m.state) for m in states] == [(e.name, "READY") for e in probed.index()]
    assert sorted(calls) == sorted(spec.members)  # still within FRAUD_READY_CACHE_S
