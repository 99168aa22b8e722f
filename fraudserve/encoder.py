"""The one row encoder, compiled from a feature schema: JSON-like rows -> the float64 matrix the models take.

REST ``/predict``, the stream worker and ``FeatureSchema.encode_records`` all use it, so a row is validated
exactly once and in one way. Names, category maps and bounds are computed once per schema; each cell takes
a fast path for the types JSON decoders produce (``float``, ``int``, ``bool``, ``str``) and falls back to
``fraudserve.schema.encode_value`` for anything else, which either accepts it or raises the precise error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fraudserve.errors import InvalidInput

if TYPE_CHECKING:
    from fraudserve.schema import Feature, FeatureSchema

# (value, path of its row) -> encoded cell; the field's full path is built only when a cell is rejected.
CellEncoder = Callable[[Any, str], float]


class RecordEncoder:
    """Validates and encodes rows (mappings) against one schema; errors name ``{prefix}[row].field``."""

    def __init__(self, schema: FeatureSchema) -> None:
        self.names: tuple[str, ...] = tuple(schema.names)
        self.known = frozenset(self.names)
        self.width = len(self.names)
        self._cells: tuple[tuple[str, CellEncoder], ...] = tuple((f.name, _compile(f)) for f in schema.features)

    def encode(self, records: Sequence[Any], *, prefix: str = "", strict: bool = False) -> np.ndarray:
        """``strict`` also rejects fields the schema does not know (request bodies); otherwise they are ignored."""
        out = np.empty((len(records), self.width), dtype=np.float64)
        for r, record in enumerate(records):
            if not isinstance(record, Mapping):
                raise InvalidInput("each transaction must be an object", field=f"{prefix}[{r}]")
            if strict and not self.known.issuperset(record):
                extra = sorted(str(k) for k in record if k not in self.known)
                raise InvalidInput(f"unknown field; expected {list(self.names)}", field=f"{prefix}[{r}].{extra[0]}")
            out[r] = self.values(record, f"{prefix}[{r}]")
        return out

    def values(self, record: Mapping[str, Any], path: str) -> list[float]:
        """One row's encoded cells (unknown fields ignored); errors name ``{path}.field``."""
        return [cell(record.get(name), path) for name, cell in self._cells]


def encoder_for(schema: FeatureSchema) -> RecordEncoder:
    """The compiled encoder of a schema (schemas are frozen, so one per schema is enough)."""
    return schema.compiled(RecordEncoder)


def _compile(feature: Feature) -> CellEncoder:
    from fraudserve.schema import encode_value

    name = feature.name

    def slow(value: Any, path: str) -> float:
        return encode_value(feature, value, f"{path}.{name}")

    if feature.kind == "category":
        index = {name: float(i) for i, name in enumerate(feature.categories or ())}

        def category(value: Any, path: str) -> float:
            code = index.get(value) if type(value) is str else None
            return slow(value, path) if code is None else code

        return category
    if feature.kind == "bool":

        def boolean(value: Any, path: str) -> float:
            if value is True:
                return 1.0
            if value is False:
                return 0.0
            return slow(value, path)

        return boolean
    lo = -math.inf if feature.minimum is None else feature.minimum
    hi = math.inf if feature.maximum is None else feature.maximum
    # bool is a subclass of int: ``type(v) is int`` keeps True/False on the slow path, which refuses them.
    fast_types: tuple[type, ...] = (int,) if feature.kind == "int" else (int, float)

    def number(value: Any, path: str) -> float:
        if type(value) in fast_types:
            x = float(value)
            if lo <= x <= hi and math.isfinite(x):
                return x
        return slow(value, path)

    return number
