"""Seeded single-row request bodies, built once, byte-identical for every server of the same protocol."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# The client-side copy of the proto (wire-compatible with ours, test_oip_proto.py): a process that also imports
# tritonclient (tests, load clients) cannot load both.
import tritonclient.grpc.service_pb2 as pb

from fraudserve.schema import FeatureSchema

_DATATYPE = {"float": "FP64", "int": "INT64", "bool": "BOOL", "category": "BYTES"}


def predict_body(row: Mapping[str, Any]) -> str:
    return json.dumps({"transactions": dict(row)})


def oip_json_body(schema: FeatureSchema, row: Mapping[str, Any]) -> str:
    """One tensor per feature, shape [1], as the bundle's model metadata advertises."""
    inputs = [
        {"name": f.name, "datatype": _DATATYPE[f.kind], "shape": [1], "data": [_plain(f.kind, row[f.name])]}
        for f in schema.features
    ]
    return json.dumps({"inputs": inputs})


def model_infer_request(schema: FeatureSchema, row: Mapping[str, Any], model: str) -> bytes:
    """The same tensors as ``oip_json_body`` in a serialised ``inference.ModelInferRequest`` (typed contents)."""
    request = pb.ModelInferRequest(model_name=model)
    for f in schema.features:
        tensor = request.inputs.add(name=f.name, datatype=_DATATYPE[f.kind], shape=[1])
        value = _plain(f.kind, row[f.name])
        if f.kind == "float":
            tensor.contents.fp64_contents.append(value)
        elif f.kind == "int":
            tensor.contents.int64_contents.append(value)
        elif f.kind == "bool":
            tensor.contents.bool_contents.append(value)
        else:
            tensor.contents.bytes_contents.append(str(value).encode())
    return request.SerializeToString()


def _plain(kind: str, value: Any) -> Any:
    if kind == "float":
        return float(value)
    if kind == "int":
        return int(value)
    if kind == "bool":
        return bool(value)
    return str(value)
