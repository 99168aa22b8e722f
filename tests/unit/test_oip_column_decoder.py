"""fraudserve/oip/column_decoder.py: the common request's fast path gives the general path's matrix, or steps aside."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fraudserve.errors import InvalidInput
from fraudserve.oip import codec
from fraudserve.oip.codec import ACCEPTED, WireTensor, decode, decode_matrix, features_matrix
from fraudserve.oip.column_decoder import FAST_DATATYPES, decoder_for
from models.transactions import TRANSACTION_SCHEMA, generate_transactions

SCHEMA = TRANSACTION_SCHEMA
ADVERTISED = {"float": "FP64", "int": "INT64", "bool": "BOOL", "category": "BYTES"}
Encoding = Callable[[pd.DataFrame], list[WireTensor]]


def frame(n: int, seed: int = 11) -> pd.DataFrame:
    return generate_transactions(n, seed=seed).drop(columns="is_fraud")


def as_json(df: pd.DataFrame, *, column: bool = False) -> list[WireTensor]:
    """As the OIP REST app hands tensors over: JSON values (categories as strings)."""
    out = []
    for f in SCHEMA.features:
        values = [_plain(f.kind, v) for v in df[f.name].tolist()]
        shape = (len(df), 1) if column else (len(df),)
        out.append(WireTensor(f.name, ADVERTISED[f.kind], shape, values=values))
    return out


def as_grpc(df: pd.DataFrame) -> list[WireTensor]:
    """As the gRPC servicer hands typed contents over (categories as bytes)."""
    return [
        WireTensor(t.name, t.datatype, t.shape, values=[v.encode() if isinstance(v, str) else v for v in t.values])
        for t in as_json(df)
    ]


def as_raw(df: pd.DataFrame) -> list[WireTensor]:
    """The binary tensor data extension (numeric columns in the fast path, BYTES and BOOL not)."""
    return [WireTensor(t.name, t.datatype, t.shape, raw=codec.raw_bytes(decode(t))) for t in as_json(df)]


def _plain(kind: str, value: Any) -> Any:
    return {"float": float, "int": int, "bool": bool, "category": str}[kind](value)


def general(inputs: list[WireTensor]) -> np.ndarray:
    return features_matrix(SCHEMA, [decode(t) for t in inputs])[0]


def test_fast_datatypes_are_a_subset_of_what_the_codec_accepts() -> None:
    for kind, datatypes in FAST_DATATYPES.items():
        assert datatypes <= ACCEPTED[kind], kind


@pytest.mark.parametrize("n", [1, 7])
@pytest.mark.parametrize("encoding", [as_json, as_grpc, lambda df: as_json(df, column=True)])
def test_plain_requests_take_the_fast_path_with_the_general_result(n: int, encoding: Encoding) -> None:
    inputs = encoding(frame(n))
    fast = decoder_for(SCHEMA).matrix(inputs)
    assert fast is not None
    np.testing.assert_array_equal(fast, general(inputs))
    np.testing.assert_array_equal(decode_matrix(SCHEMA, inputs)[0], fast)


def test_raw_numeric_columns_are_fast_and_raw_bytes_step_aside() -> None:
    df = frame(5)
    inputs = as_raw(df)
    assert decoder_for(SCHEMA).matrix(inputs) is None  # the category (BYTES) and booleans travel raw
    np.testing.assert_array_equal(decode_matrix(SCHEMA, inputs)[0], general(inputs))
    mixed = [r if r.datatype not in ("BYTES", "BOOL") else j for r, j in zip(inputs, as_json(df), strict=True)]
    fast = decoder_for(SCHEMA).matrix(mixed)
    assert fast is not None
    np.testing.assert_array_equal(fast, general(mixed))


def swap(name: str, **change: Any) -> Callable[[list[WireTensor]], list[WireTensor]]:
    def apply(inputs: list[WireTensor]) -> list[WireTensor]:
        out = []
        for t in inputs:
            if t.name == name:
                fields = {"name": t.name, "datatype": t.datatype, "shape": t.shape, "raw": t.raw, "values": t.values}
                t = WireTensor(**(fields | change))
            out.append(t)
        return out

    return apply


UNUSUAL = {
    "unknown category": swap("merchant_category", values=["casino", "grocery"]),
    "category as a number": swap("merchant_category", values=[1, 2]),
    "bool in FP64": swap("amount", values=[True, False]),
    "float in INT64": swap("hour", values=[1.5, 2.0]),
    "integer past 2**53": swap("amount", datatype="INT64", values=[2**60, 1]),
    "INT32 overflow": swap("hour", datatype="INT32", values=[2**40, 1]),
    "int in BOOL": swap("card_present", values=[1, 0]),
    "string number": swap("amount", values=["1.0", "2.0"]),
    "nested data": swap("amount", shape=(2, 1), values=[[1.0], [2.0]]),
    "wide shape": swap("amount", shape=(1, 2)),
    "row mismatch": swap("amount", shape=(3,), values=[1.0, 2.0, 3.0]),
    "FP16": swap("amount", datatype="FP16"),
    "unknown datatype for the kind": swap("merchant_category", datatype="FP64", values=[0.0, 1.0]),
    "missing input": lambda ts: ts[1:],
    "twice": lambda ts: [*ts[1:], ts[1]],
    "unknown input": lambda ts: [*ts[:-1], WireTensor("colour", "FP64", (2,), values=[1.0, 2.0])],
    "empty": lambda ts: [WireTensor(t.name, t.datatype, (0,), values=[]) for t in ts],
}


@pytest.mark.parametrize("case", list(UNUSUAL))
def test_unusual_requests_step_aside_and_the_general_path_decides(case: str) -> None:
    inputs = UNUSUAL[case](as_json(frame(2)))
    assert decoder_for(SCHEMA).matrix(inputs) is None
    try:
        expected: Any = general(inputs)
    except InvalidInput as exc:
        expected = (exc.field, str(exc))
    try:
        got: Any = decode_matrix(SCHEMA, inputs)[0]
    except InvalidInput as exc:
        got = (exc.field, str(exc))
    if isinstance(expected, np.ndarray):
        np.testing.assert_array_equal(got, expected)
    else:
        assert got == expected


def test_random_mutations_never_disagree_with_the_general_path() -> None:
    """Wherever the fast path answers, the general path answers the same matrix (never an error)."""
    rng = random.Random(7)
    odd_values: list[Any] = [0, 1, -1, 2**53, 2**31, 1.5, -0.0, True, False, "grocery", b"grocery", "x", None, [1.0]]
    datatypes = ["FP64", "FP32", "INT64", "INT32", "BOOL", "BYTES", "UINT8"]
    answered = 0
    for trial in range(400):
        inputs = (as_json if trial % 2 else as_grpc)(frame(3, seed=trial))
        k = rng.randrange(len(inputs))
        t = inputs[k]
        values = list(t.values)
        values[rng.randrange(len(values))] = rng.choice(odd_values)
        datatype = rng.choice(datatypes) if rng.random() < 0.3 else t.datatype
        inputs[k] = WireTensor(t.name, datatype, t.shape, values=values)
        fast = decoder_for(SCHEMA).matrix(inputs)
        if fast is None:
            continue
        answered += 1
        np.testing.assert_array_equal(fast, general(inputs), err_msg=f"trial {trial}: {inputs[k]}")
    assert answered > 50  # the mutations keep many requests plain (e.g. an int in FP64)
