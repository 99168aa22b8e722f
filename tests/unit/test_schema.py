from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from fraudserve.errors import InvalidInput
from fraudserve.schema import Feature, FeatureSchema, invalid_mask
from models.transactions import TRANSACTION_SCHEMA, generate_transactions

ROW = {
    "amount": 120.5,
    "hour": 3,
    "merchant_category": "electronics",
    "distance_from_home_km": 800.0,
    "card_present": False,
    "is_foreign": True,
    "txn_count_1h": 4,
    "txn_count_24h": 9,
    "amount_avg_30d": 40.0,
    "account_age_days": 20,
}


def test_encode_records_orders_columns_by_schema() -> None:
    matrix = TRANSACTION_SCHEMA.encode_records([ROW])
    assert matrix.shape == (1, len(TRANSACTION_SCHEMA.features))
    assert matrix[0, TRANSACTION_SCHEMA.names.index("merchant_category")] == 7.0  # index of "electronics"
    assert matrix[0, TRANSACTION_SCHEMA.names.index("card_present")] == 0.0
    assert matrix[0, TRANSACTION_SCHEMA.names.index("amount")] == 120.5


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"amount": None}, "transactions[0].amount", "required"),
        ({"amount": "12"}, "transactions[0].amount", "number"),
        ({"amount": math.nan}, "transactions[0].amount", "finite"),
        ({"amount": math.inf}, "transactions[0].amount", "finite"),
        ({"amount": -1.0}, "transactions[0].amount", "out of range"),
        ({"hour": 24}, "transactions[0].hour", "out of range"),
        ({"hour": 3.5}, "transactions[0].hour", "integer"),
        ({"merchant_category": "casino"}, "transactions[0].merchant_category", "unknown category"),
        ({"card_present": "yes"}, "transactions[0].card_present", "boolean"),
        ({"is_foreign": True, "txn_count_1h": True}, "transactions[0].txn_count_1h", "number"),
    ],
)
def test_encode_records_names_the_bad_field(change: dict[str, object], field: str, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        TRANSACTION_SCHEMA.encode_records([{**ROW, **change}], prefix="transactions")
    assert info.value.field == field
    assert message in info.value.message


def test_pydantic_model_rejects_bad_rows_and_extra_fields() -> None:
    model = TRANSACTION_SCHEMA.pydantic_model()
    assert model.model_validate(ROW).model_dump() == ROW
    for bad in ({**ROW, "amount": math.nan}, {**ROW, "hour": -1}, {**ROW, "merchant_category": "x"}, {**ROW, "x": 1}):
        with pytest.raises(ValidationError):
            model.model_validate(bad)
    missing = dict(ROW)
    del missing["hour"]
    with pytest.raises(ValidationError) as info:
        model.model_validate(missing)
    assert info.value.errors()[0]["loc"] == ("hour",)


def test_validate_matrix_checks_shape_and_cells() -> None:
    good = TRANSACTION_SCHEMA.encode_records([ROW, ROW])
    assert TRANSACTION_SCHEMA.validate_matrix(good) is good
    with pytest.raises(InvalidInput, match="shape"):
        TRANSACTION_SCHEMA.validate_matrix(good[:, :3])
    bad = good.copy()
    bad[1, TRANSACTION_SCHEMA.names.index("merchant_category")] = 42
    with pytest.raises(InvalidInput) as info:
        TRANSACTION_SCHEMA.validate_matrix(bad, prefix="features")
    assert info.value.field == "features[1].merchant_category"


def test_generated_data_fits_its_schema() -> None:
    frame = generate_transactions(5_000, seed=3)
    matrix = TRANSACTION_SCHEMA.encode_records(frame.drop(columns="is_fraud").to_dict("records"))
    assert np.isfinite(matrix).all()
    assert 0.005 < frame["is_fraud"].mean() < 0.03


def test_generator_is_seeded() -> None:
    assert generate_transactions(500, seed=1).equals(generate_transactions(500, seed=1))
    assert not generate_transactions(500, seed=1).equals(generate_transactions(500, seed=2))


def test_schema_rejects_inconsistent_definitions() -> None:
    with pytest.raises(ValidationError):
        Feature(name="c", kind="category")
    with pytest.raises(ValidationError):
        Feature(name="x", kind="float", minimum=2, maximum=1)
    with pytest.raises(ValidationError):
        FeatureSchema(features=(Feature(name="a", kind="bool"), Feature(name="a", kind="bool")))


def _reference_invalid_mask(matrix: np.ndarray) -> np.ndarray:
    """The per-kind definition the vectorised bounds of fraudserve.schema.invalid_mask must keep."""
    bad = ~np.isfinite(matrix)
    with np.errstate(invalid="ignore"):
        for c, f in enumerate(TRANSACTION_SCHEMA.features):
            col = matrix[:, c]
            if f.kind == "category":
                assert f.categories is not None
                bad[:, c] |= (col < 0) | (col >= len(f.categories)) | (col != np.floor(col))
            elif f.kind == "bool":
                bad[:, c] |= (col != 0) & (col != 1)
            else:
                if f.kind == "int":
                    bad[:, c] |= col != np.floor(col)
                if f.minimum is not None:
                    bad[:, c] |= col < f.minimum
                if f.maximum is not None:
                    bad[:, c] |= col > f.maximum
    return bad


def test_invalid_mask_matches_the_per_kind_rules() -> None:
    rng = np.random.default_rng(5)
    good = TRANSACTION_SCHEMA.encode_records(
        generate_transactions(400, seed=8).drop(columns="is_fraud").to_dict("records")
    )
    noisy = good.copy()
    cells = rng.random(noisy.shape) < 0.2
    odd = rng.choice([np.nan, np.inf, -np.inf, -1.0, 0.5, 1.0, 2.0, 1e9, -1e9, 3.0, 24.0, 23.5], size=noisy.shape)
    noisy[cells] = odd[cells]
    np.testing.assert_array_equal(invalid_mask(TRANSACTION_SCHEMA, noisy), _reference_invalid_mask(noisy))
    assert not invalid_mask(TRANSACTION_SCHEMA, good).any()
    assert invalid_mask(TRANSACTION_SCHEMA, noisy).any()


def test_compiled_objects_do_not_change_equality() -> None:
    """What a schema compiles is cached on it: equal schemas stay equal, and comparing them does not fail."""
    copy = FeatureSchema.model_validate(TRANSACTION_SCHEMA.model_dump())
    other = FeatureSchema.model_validate({**TRANSACTION_SCHEMA.model_dump(), "label": "chargeback"})
    for schema in (TRANSACTION_SCHEMA, copy, other):
        invalid_mask(schema, np.zeros((1, len(schema.features))))  # compiles its bounds (numpy arrays)
    assert copy == TRANSACTION_SCHEMA
    assert TRANSACTION_SCHEMA.__eq__(copy)  # both orders
    assert other != TRANSACTION_SCHEMA
    assert hash(copy) == hash(TRANSACTION_SCHEMA)
    builds: list[FeatureSchema] = []

    def build(schema: FeatureSchema) -> int:
        builds.append(schema)
        return len(schema.features)

    assert copy.compiled(build) == copy.compiled(build) == len(copy.features)
    assert builds == [copy]  # built once per schema
