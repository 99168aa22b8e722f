"""The common OIP request decoded straight into the feature matrix: one plain tensor per feature.

That is what model metadata advertises and what clients send (``[n]`` or ``[n, 1]`` per feature,
FP64 / INT64 / BOOL / BYTES or FP32 / INT32, as JSON ``data``, typed gRPC ``contents`` or raw bytes).
``fraudserve.oip.codec`` decodes every tensor into a typed ``Tensor`` first, checking each one on its own,
then stacks them: general, but ~16 us per tensor, most of a single-row request's cost. Here each column
is written into the matrix at once. Anything unusual (another layout or datatype, an element of an
unexpected type, an unknown category, an integer too large to be exact as a float) answers ``None`` and
the caller takes the general path, which accepts it or raises its precise error: the two paths give the
same matrix wherever this one answers (tests/unit/test_oip_column_decoder.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fraudserve.schema import FeatureSchema

# Past 2**53 an integer is not exact as a float64; the general path decides what such a value means.
_EXACT = 2**53
_RAW_DTYPES: dict[str, np.dtype[Any]] = {
    "FP64": np.dtype("<f8"),
    "FP32": np.dtype("<f4"),
    "INT64": np.dtype("<i8"),
    "INT32": np.dtype("<i4"),
}
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "FP64": (float, int),
    "FP32": (float, int),
    "INT64": (int,),
    "INT32": (int,),
    "BOOL": (bool,),
}
_INT32 = 2**31
# The datatypes this path takes per feature kind: a subset of what fraudserve.oip.codec.ACCEPTED allows.
FAST_DATATYPES: dict[str, frozenset[str]] = {
    "float": frozenset({"FP64", "FP32", "INT64", "INT32"}),
    "int": frozenset({"FP64", "FP32", "INT64", "INT32"}),
    "bool": frozenset({"BOOL", "INT64", "INT32"}),
    "category": frozenset({"BYTES"}),
}


class ColumnDecoder:
    """Compiled from one schema: feature positions, accepted datatypes and category codes."""

    def __init__(self, schema: FeatureSchema) -> None:
        self.width = len(schema.features)
        self._position = {f.name: j for j, f in enumerate(schema.features)}
        self._accepted = tuple(FAST_DATATYPES[f.kind] for f in schema.features)
        codes: list[dict[str | bytes, float] | None] = []
        for f in schema.features:
            if f.kind == "category":
                assert f.categories is not None
                # JSON sends a category as a string, gRPC as bytes.
                by_text: dict[str | bytes, float] = {c: float(i) for i, c in enumerate(f.categories)}
                codes.append(by_text | {c.encode(): float(i) for i, c in enumerate(f.categories)})
            else:
                codes.append(None)
        self._codes = tuple(codes)

    def matrix(self, inputs: Sequence[Any]) -> np.ndarray | None:
        """The encoded (not yet range-checked) matrix of ``WireTensor`` inputs, or None: decode the general way."""
        if len(inputs) != self.width:
            return None
        rows = _rows(inputs[0])
        if rows <= 0:
            return None
        columns: list[Any] = [None] * self.width
        for tensor in inputs:
            j = self._position.get(tensor.name)
            if j is None or columns[j] is not None or tensor.datatype not in self._accepted[j] or _rows(tensor) != rows:
                return None
            column = self._column(tensor, j, rows)
            if column is None:
                return None
            columns[j] = column
        out = np.empty((rows, self.width), dtype=np.float64)
        for j, column in enumerate(columns):
            out[:, j] = column
        return out

    def _column(self, tensor: Any, j: int, rows: int) -> Any:
        datatype = tensor.datatype
        codes = self._codes[j]
        raw = getattr(tensor, "raw", None)
        values = getattr(tensor, "values", None)
        if raw is not None:
            dtype = _RAW_DTYPES.get(datatype)
            if dtype is None or len(raw) != rows * dtype.itemsize:
                return None
            return np.frombuffer(raw, dtype=dtype)
        if (
            values is None
            or not hasattr(values, "__len__")
            or isinstance(values, str | bytes | dict)
            or len(values) != rows
        ):
            return None
        if codes is not None:
            column = [codes.get(v) if type(v) is str or type(v) is bytes else None for v in values]
            return None if None in column else column
        types = _JSON_TYPES[datatype]
        for v in values:
            if type(v) not in types:
                return None
            if type(v) is int and not -_EXACT < v < _EXACT:
                return None
        if datatype == "INT32" and any(not -_INT32 <= v < _INT32 for v in values):
            return None
        if datatype == "FP32":
            return np.asarray(values, dtype=np.float32)
        return values


def _rows(tensor: Any) -> int:
    """The row count of a ``[n]`` or ``[n, 1]`` tensor; 0 for any other shape."""
    shape = tensor.shape
    if len(shape) == 1 or (len(shape) == 2 and shape[1] == 1):
        return int(shape[0])
    return 0


def decoder_for(schema: FeatureSchema) -> ColumnDecoder:
    return schema.compiled(ColumnDecoder)
