"""The feature schema: names, kinds and valid ranges of the model inputs.

It is saved with every model, so the service, the batch scorer and the stream worker all
validate and encode rows exactly as training did.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from fraudserve.errors import InvalidInput

T = TypeVar("T")
FeatureKind = Literal["float", "int", "bool", "category"]


class Feature(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    kind: FeatureKind
    minimum: float | None = None
    maximum: float | None = None
    categories: tuple[str, ...] | None = None
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> Feature:
        if self.kind == "category" and not self.categories:
            raise ValueError(f"category feature {self.name!r} needs categories")
        if self.kind != "category" and self.categories:
            raise ValueError(f"only category features take categories ({self.name!r})")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"feature {self.name!r}: minimum > maximum")
        return self


class _Derived(dict[Callable[["FeatureSchema"], Any], Any]):
    """What a schema compiled from its fields. pydantic compares models by ``__dict__`` first, where this cache
    lives too: it must not decide (nor fail on numpy values), so it equals any other."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Derived)


class FeatureSchema(BaseModel):
    model_config = ConfigDict(frozen=True)

    features: tuple[Feature, ...] = Field(min_length=1)
    label: str = "is_fraud"

    @model_validator(mode="after")
    def _unique(self) -> FeatureSchema:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError("feature names must be unique")
        if self.label in names:
            raise ValueError("the label cannot also be a feature")
        return self

    @cached_property
    def _compiled(self) -> _Derived:
        return _Derived()

    def compiled(self, build: Callable[[FeatureSchema], T]) -> T:
        """``build(self)``, made once per schema: encoders, decoders and bounds compiled from it (it is frozen).

        Kept on the instance, not in an ``lru_cache``: hashing a schema walks every feature, per request.
        """
        cache = self._compiled
        try:
            return cache[build]  # type: ignore[no-any-return]
        except KeyError:
            value = cache[build] = build(self)
            return value

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def categorical_indices(self) -> list[int]:
        return [i for i, f in enumerate(self.features) if f.kind == "category"]

    @property
    def numeric_indices(self) -> list[int]:
        return [i for i, f in enumerate(self.features) if f.kind != "category"]

    def encode_records(
        self, records: Sequence[Mapping[str, Any]], *, prefix: str = "", strict: bool = False
    ) -> np.ndarray:
        """Validate rows given as mappings and encode them into a float64 matrix (``fraudserve.encoder``).

        Raises InvalidInput naming the first bad field as ``{prefix}[row].name``; ``strict`` also
        refuses fields the schema does not know.
        """
        from fraudserve.encoder import encoder_for

        return encoder_for(self).encode(records, prefix=prefix, strict=strict)

    def validate_matrix(self, matrix: np.ndarray, *, prefix: str = "") -> np.ndarray:
        """Check an already-encoded matrix (as sent in a tensor) against the schema."""
        if matrix.ndim != 2 or matrix.shape[1] != len(self.features):
            raise InvalidInput(
                f"expected shape [n, {len(self.features)}], got {list(matrix.shape)}", field=prefix or None
            )
        bad = _invalid_cells(self, matrix)
        if bad is not None:
            r, c = bad
            f = self.features[c]
            raise InvalidInput(
                f"value {matrix[r, c]!r} is not a valid {f.kind}{_range_text(f)}",
                field=f"{prefix}[{r}].{f.name}",
            )
        return matrix

    def pydantic_model(self, name: str = "Transaction") -> type[BaseModel]:
        """A strict pydantic model of one row, for request validation and the OpenAPI document."""
        fields: dict[str, Any] = {f.name: _pydantic_field(f) for f in self.features}
        return create_model(  # type: ignore[call-overload,no-any-return]
            name,
            __config__=ConfigDict(extra="forbid", allow_inf_nan=False),
            **fields,
        )

    def example_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for f in self.features:
            if f.kind == "category":
                assert f.categories
                row[f.name] = f.categories[0]
            elif f.kind == "bool":
                row[f.name] = False
            else:
                lo = f.minimum if f.minimum is not None else 0.0
                hi = f.maximum if f.maximum is not None else lo + 1.0
                mid = lo + (hi - lo) / 100.0
                row[f.name] = int(mid) if f.kind == "int" else round(mid, 2)
        return row


def encode_value(feature: Feature, value: Any, field: str) -> float:
    if value is None:
        raise InvalidInput("field is required", field=field)
    if feature.kind == "category":
        assert feature.categories is not None
        if not isinstance(value, str):
            raise InvalidInput("must be a string category", field=field)
        try:
            return float(feature.categories.index(value))
        except ValueError:
            raise InvalidInput(
                f"unknown category {value!r}; expected one of {list(feature.categories)}", field=field
            ) from None
    if feature.kind == "bool":
        if isinstance(value, bool):
            return float(value)
        if isinstance(value, int | float) and value in (0, 1):
            return float(value)
        raise InvalidInput("must be a boolean", field=field)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"must be a number, got {type(value).__name__}", field=field)
    number = float(value)
    if not math.isfinite(number):
        raise InvalidInput("must be a finite number", field=field)
    if feature.kind == "int" and not number.is_integer():
        raise InvalidInput("must be an integer", field=field)
    if (feature.minimum is not None and number < feature.minimum) or (
        feature.maximum is not None and number > feature.maximum
    ):
        raise InvalidInput(f"{number!r} is out of range{_range_text(feature)}", field=field)
    return number


def _bounds(schema: FeatureSchema) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column: the lowest and highest valid value, and whether it must be a whole number.

    A category code is a whole number in [0, n - 1] and a boolean one in [0, 1], so every kind is a range check
    plus, for all but floats, an integrality check.
    """
    lo = np.full(len(schema.features), -np.inf)
    hi = np.full(len(schema.features), np.inf)
    integral = np.zeros(len(schema.features), dtype=bool)
    for c, f in enumerate(schema.features):
        if f.kind == "category":
            assert f.categories is not None
            lo[c], hi[c] = 0.0, float(len(f.categories) - 1)
        elif f.kind == "bool":
            lo[c], hi[c] = 0.0, 1.0
        else:
            if f.minimum is not None:
                lo[c] = f.minimum
            if f.maximum is not None:
                hi[c] = f.maximum
        integral[c] = f.kind != "float"
    return lo, hi, integral


def invalid_mask(schema: FeatureSchema, matrix: np.ndarray) -> np.ndarray:
    """Per cell: True where an encoded value breaks the schema (vectorised over the whole matrix)."""
    lo, hi, integral = schema.compiled(_bounds)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(matrix)
        bad |= matrix < lo
        bad |= matrix > hi
        bad |= integral & (matrix != np.floor(matrix))
    return bad


def _invalid_cells(schema: FeatureSchema, matrix: np.ndarray) -> tuple[int, int] | None:
    bad = invalid_mask(schema, matrix)
    if not bad.any():
        return None
    r, c = np.argwhere(bad)[0]
    return int(r), int(c)


def _range_text(f: Feature) -> str:
    if f.kind == "category":
        return f" index in [0, {len(f.categories or ()) - 1}]"
    if f.minimum is None and f.maximum is None:
        return ""
    return f" in [{f.minimum}, {f.maximum}]"


def _pydantic_field(f: Feature) -> Any:
    description = f.description or None
    if f.kind == "category":
        assert f.categories is not None
        return (Literal[f.categories], Field(..., description=description))  # type: ignore[valid-type]
    if f.kind == "bool":
        # The encoder takes 0/1 for a boolean too (as CSV files and many JSON producers write them).
        return (bool | Literal[0, 1], Field(..., description=description))
    base: Any = int if f.kind == "int" else float
    constrained = Annotated[base, Field(ge=f.minimum, le=f.maximum, strict=False)]
    return (constrained, Field(..., description=description))
