"""Open Inference Protocol tensors <-> the encoded feature matrix and the scored outputs.

Transport-free: the REST app and the gRPC servicer hand over ``WireTensor`` values (a declared
header plus undecoded content), get typed ``Tensor`` values back out of ``decode``, and turn
outputs back into their wire formats; everything between is here. ``check_inputs`` checks what a
header alone can tell (datatype, dimensions, element count against the payload size, the row cap)
so that an oversized or inconsistent request is refused before any content is decoded. Errors are
``InvalidInput`` (``PayloadTooLarge`` past the row cap) naming the offending input or output.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from fraudserve.errors import InvalidInput, PayloadTooLarge
from fraudserve.oip.column_decoder import decoder_for
from fraudserve.schema import Feature, FeatureSchema

DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
_NUMERIC = frozenset(DTYPES) - {"BOOL", "BYTES"}
_INTEGER = frozenset(d for d in _NUMERIC if d.startswith(("INT", "UINT")))
# Which tensor datatypes a feature of each kind accepts; values are range-checked later by the schema.
ACCEPTED: dict[str, frozenset[str]] = {
    "float": _NUMERIC,
    "int": _NUMERIC,
    "bool": frozenset({"BOOL"}) | _INTEGER,
    "category": frozenset({"BYTES"}),
}
# The datatype each kind is advertised with in model metadata.
ADVERTISED = {"float": "FP64", "int": "INT64", "bool": "BOOL", "category": "BYTES"}
FEATURES_INPUT = "features"
_LENGTH = struct.Struct("<I")
T = TypeVar("T")


@dataclass(frozen=True)
class Tensor:
    """One named tensor; ``data`` has ``shape`` and the numpy dtype of ``datatype`` (BYTES: bytes objects)."""

    name: str
    datatype: str
    data: np.ndarray

    @property
    def shape(self) -> list[int]:
        return list(self.data.shape)


@dataclass(frozen=True)
class WireTensor:
    """A tensor as it arrived, not decoded yet: its header and either ``raw`` bytes or element ``values``."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes | None = None
    values: Any = None  # JSON ``data`` (flat or nested) or typed gRPC ``contents``

    @property
    def payload_bytes(self) -> int:
        """About how much content decoding has to go through (8 bytes per value element)."""
        if self.raw is not None:
            return len(self.raw)
        return 8 * _top_level_len(self.values)


Input = Tensor | WireTensor


@dataclass(frozen=True)
class TensorSpec:
    """Name, datatype and shape (-1: any size) of a model input or output, as model metadata shows it."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def _dtype(name: str, datatype: str) -> np.dtype[Any]:
    try:
        return DTYPES[datatype]
    except KeyError:
        raise InvalidInput(f"input {name!r}: unknown datatype {datatype!r}; expected one of {list(DTYPES)}") from None


_MAX_DIM = 2**31 - 1


def _check_dims(name: str, shape: Sequence[int]) -> tuple[int, ...]:
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise InvalidInput(f"input {name!r}: shape {list(dims)} has a negative dimension", field=name)
    # numpy cannot even describe an array past 2**31 elements per dimension here, empty or not.
    if any(d > _MAX_DIM for d in dims):
        raise InvalidInput(f"input {name!r}: shape {list(dims)} has a dimension above {_MAX_DIM}", field=name)
    return dims


def _count_mismatch(name: str, dims: tuple[int, ...], size: int) -> InvalidInput:
    expected = math.prod(dims)
    return InvalidInput(f"input {name!r}: shape {list(dims)} holds {expected} elements, data has {size}", field=name)


def _check_shape(name: str, shape: Sequence[int], size: int) -> tuple[int, ...]:
    dims = _check_dims(name, shape)
    if math.prod(dims) != size:
        raise _count_mismatch(name, dims, size)
    return dims


def _top_level_len(values: Any) -> int:
    if values is None or isinstance(values, str | bytes):
        return 1
    try:
        return len(values)
    except TypeError:
        return 1


def _is_flat(values: Any) -> bool:
    if isinstance(values, np.ndarray):
        return values.ndim == 1
    if isinstance(values, list | tuple):
        return not values or not isinstance(values[0], list | tuple | np.ndarray)
    return hasattr(values, "__len__") and not isinstance(values, str | bytes | dict)


def check_header(tensor: WireTensor) -> tuple[int, ...]:
    """Datatype, dimensions and element count against the payload size, without decoding the content."""
    name, datatype = tensor.name, tensor.datatype
    dtype = _dtype(name, datatype)
    dims = _check_dims(name, tensor.shape)
    expected = math.prod(dims)
    raw = tensor.raw
    if raw is not None:
        if datatype == "BYTES":
            # Every element carries a 4-byte length, so the payload bounds the element count.
            if expected * _LENGTH.size > len(raw):
                raise InvalidInput(
                    f"input {name!r}: shape {list(dims)} holds {expected} elements,"
                    f" more than {len(raw)} bytes of BYTES data can",
                    field=name,
                )
        elif len(raw) % dtype.itemsize:
            raise InvalidInput(f"input {name!r}: {len(raw)} bytes is not a whole number of {datatype}", field=name)
        elif len(raw) // dtype.itemsize != expected:
            raise _count_mismatch(name, dims, len(raw) // dtype.itemsize)
    elif _is_flat(tensor.values) and len(tensor.values) != expected:
        raise _count_mismatch(name, dims, len(tensor.values))
    return dims


def check_inputs(inputs: Sequence[Input], *, max_rows: int) -> None:
    """Every header check and the row cap, before any content is decoded (``PayloadTooLarge`` past the cap)."""
    for tensor in inputs:
        dims = check_header(tensor) if isinstance(tensor, WireTensor) else tuple(tensor.shape)
        if dims and dims[0] > max_rows:
            raise PayloadTooLarge(f"{dims[0]} rows exceed the limit of {max_rows} per request", field=tensor.name)


def payload_bytes(inputs: Sequence[Input]) -> int:
    return sum(t.payload_bytes for t in inputs if isinstance(t, WireTensor))


def decode(tensor: Input) -> Tensor:
    """The typed tensor of a ``WireTensor`` (a ``Tensor`` is returned as it is)."""
    if isinstance(tensor, Tensor):
        return tensor
    if tensor.raw is not None:
        return tensor_from_raw(tensor.name, tensor.datatype, tensor.shape, tensor.raw)
    return tensor_from_values(tensor.name, tensor.datatype, tensor.shape, tensor.values)


def decode_matrix(schema: FeatureSchema, inputs: Sequence[Input]) -> tuple[np.ndarray, str]:
    """``features_matrix`` of the decoded inputs; call ``check_inputs`` first.

    The common request (one plain tensor per feature) is written straight into the matrix
    (fraudserve/oip/column_decoder.py); anything else is decoded tensor by tensor.
    """
    if all(isinstance(t, WireTensor) for t in inputs):
        matrix = decoder_for(schema).matrix(inputs)
        if matrix is not None:
            return matrix, "inputs"
    return features_matrix(schema, [decode(t) for t in inputs])


def tensor_from_values(name: str, datatype: str, shape: Sequence[int], values: Any) -> Tensor:
    """A tensor from element values: JSON ``data`` (flat or nested) or typed gRPC ``contents``."""
    dtype = _dtype(name, datatype)
    if datatype == "BYTES":
        check_header(WireTensor(name, datatype, tuple(shape), values=values))
        flat = _flatten(values)
        if not all(isinstance(v, str | bytes) for v in flat):
            raise InvalidInput(f"input {name!r}: BYTES elements must be strings", field=name)
        array = np.empty(len(flat), dtype=object)
        array[:] = [v.encode() if isinstance(v, str) else v for v in flat]
    else:
        try:
            array = np.asarray(values).reshape(-1)
        except ValueError:
            raise InvalidInput(f"input {name!r}: data is ragged, not a tensor", field=name) from None
        if array.size and not _fits(array.dtype, datatype):
            raise InvalidInput(f"input {name!r}: data elements are not {datatype}", field=name)
        if datatype in _INTEGER and array.size and not _within(array, dtype):
            raise InvalidInput(f"input {name!r}: data elements overflow {datatype}", field=name)
        array = array.astype(dtype)
    return Tensor(name, datatype, array.reshape(_check_shape(name, shape, array.size)))


def _fits(found: np.dtype[Any], datatype: str) -> bool:
    if datatype == "BOOL":
        return found.kind == "b"
    if datatype in _INTEGER:
        return found.kind in "iu"
    return found.kind in "iuf"


def _within(array: np.ndarray, dtype: np.dtype[Any]) -> bool:
    info = np.iinfo(dtype)
    return bool(int(array.min()) >= info.min and int(array.max()) <= info.max)


def _flatten(values: Any) -> list[Any]:
    if isinstance(values, str | bytes):
        return [values]
    if isinstance(values, np.ndarray):
        return list(values.reshape(-1))
    out: list[Any] = []
    for v in values:
        out.extend(_flatten(v) if isinstance(v, list | tuple | np.ndarray) else [v])
    return out


def tensor_from_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes) -> Tensor:
    """A tensor from the binary tensor data extension: little-endian, row-major; BYTES length-prefixed."""
    dtype = _dtype(name, datatype)
    dims = check_header(WireTensor(name, datatype, tuple(shape), raw=raw))
    if datatype == "BYTES":
        items = _split_bytes(name, raw, math.prod(dims))
        array = np.empty(len(items), dtype=object)
        array[:] = items
    else:
        array = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype)
    return Tensor(name, datatype, array.reshape(_check_shape(name, shape, array.size)))


def _split_bytes(name: str, raw: bytes, expected: int) -> list[bytes]:
    items: list[bytes] = []
    offset = 0
    # Past ``expected`` elements the request is wrong whatever follows: stop splitting there.
    while offset < len(raw) and len(items) <= expected:
        if offset + _LENGTH.size > len(raw):
            raise InvalidInput(f"input {name!r}: truncated BYTES element length", field=name)
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + length > len(raw):
            raise InvalidInput(f"input {name!r}: truncated BYTES element", field=name)
        items.append(bytes(raw[offset : offset + length]))
        offset += length
    return items


def raw_bytes(tensor: Tensor) -> bytes:
    """The binary tensor data extension encoding of a tensor."""
    if tensor.datatype == "BYTES":
        return b"".join(_LENGTH.pack(len(v)) + v for v in tensor.data.reshape(-1))
    return np.ascontiguousarray(tensor.data, dtype=tensor.data.dtype.newbyteorder("<")).tobytes()


def json_values(tensor: Tensor) -> list[Any]:
    """Flat, row-major JSON-ready elements (BYTES as UTF-8 strings)."""
    flat = tensor.data.reshape(-1)
    if tensor.datatype == "BYTES":
        return [v.decode("utf-8", errors="replace") for v in flat]
    return flat.tolist()  # type: ignore[no-any-return]


def input_specs(schema: FeatureSchema) -> tuple[TensorSpec, ...]:
    """The per-feature inputs a model advertises (one [n] tensor per schema feature)."""
    return tuple(TensorSpec(f.name, ADVERTISED[f.kind], (-1,)) for f in schema.features)


def features_matrix(schema: FeatureSchema, inputs: Sequence[Tensor]) -> tuple[np.ndarray, str]:
    """Inputs -> (encoded float64 matrix, field prefix for the schema's value errors).

    Either one tensor per feature (shape [n] or [n, 1]), or a single ``features`` tensor
    [n, d] of already-encoded values. Value ranges are checked by the core afterwards.
    """
    if not inputs:
        raise InvalidInput("the request has no inputs", field="inputs")
    if len(inputs) == 1 and inputs[0].name == FEATURES_INPUT and FEATURES_INPUT not in schema.names:
        return _encoded_matrix(schema, inputs[0]), FEATURES_INPUT
    by_name: dict[str, Tensor] = {}
    for tensor in inputs:
        if tensor.name in by_name:
            raise InvalidInput(f"input {tensor.name!r} is given twice", field=tensor.name)
        if tensor.name not in schema.names:
            raise InvalidInput(
                f"unknown input {tensor.name!r}; expected one tensor per feature {schema.names}"
                f" or a single {FEATURES_INPUT!r} tensor",
                field=tensor.name,
            )
        by_name[tensor.name] = tensor
    missing = [n for n in schema.names if n not in by_name]
    if missing:
        raise InvalidInput(f"missing input {missing[0]!r} (missing: {missing})", field=missing[0])
    rows = {len(t.data) if t.data.ndim else -1 for t in inputs}
    columns = [_feature_column(f, by_name[f.name]) for f in schema.features]
    if len(rows) != 1:
        sizes = {t.name: t.shape for t in inputs}
        raise InvalidInput(f"inputs must all have the same number of rows, got shapes {sizes}", field="inputs")
    return np.column_stack(columns).astype(np.float64, copy=False), "inputs"


def _encoded_matrix(schema: FeatureSchema, tensor: Tensor) -> np.ndarray:
    if tensor.datatype not in ("FP64", "FP32"):
        raise InvalidInput(
            f"input {FEATURES_INPUT!r} must be FP64 or FP32, got {tensor.datatype}", field=FEATURES_INPUT
        )
    if tensor.data.ndim != 2 or tensor.data.shape[1] != len(schema.features):
        raise InvalidInput(
            f"input {FEATURES_INPUT!r} must have shape [n, {len(schema.features)}], got {tensor.shape}",
            field=FEATURES_INPUT,
        )
    return tensor.data.astype(np.float64, copy=False)


def _feature_column(feature: Feature, tensor: Tensor) -> np.ndarray:
    name = feature.name
    if tensor.datatype not in ACCEPTED[feature.kind]:
        raise InvalidInput(
            f"input {name!r} ({feature.kind}) must be one of {sorted(ACCEPTED[feature.kind])}, got {tensor.datatype}",
            field=name,
        )
    data = tensor.data
    if not (data.ndim == 1 or (data.ndim == 2 and data.shape[1] == 1)):
        raise InvalidInput(f"input {name!r} must have shape [n] or [n, 1], got {tensor.shape}", field=name)
    data = data.reshape(-1)
    if feature.kind != "category":
        return data.astype(np.float64)
    assert feature.categories is not None
    index = {c.encode(): float(i) for i, c in enumerate(feature.categories)}
    column = np.empty(len(data), dtype=np.float64)
    for r, value in enumerate(data):
        code = index.get(value)
        if code is None:
            raise InvalidInput(
                f"input {name!r}: unknown category {value.decode(errors='replace')!r};"
                f" expected one of {list(feature.categories)}",
                field=f"{name}[{r}]",
            )
        column[r] = code
    return column


def select_outputs(columns: Mapping[str, T], requested: Iterable[str] | None, *, model_name: str) -> list[T]:
    """The requested outputs in request order; all of them when none is requested."""
    if not requested:
        return list(columns.values())
    selected = []
    for name in requested:
        if name not in columns:
            raise InvalidInput(
                f"model {model_name!r} has no output {name!r}; outputs are {list(columns)}", field=f"outputs.{name}"
            )
        selected.append(columns[name])
    return selected
