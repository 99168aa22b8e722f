from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fraudserve.errors import InvalidInput
from fraudserve.features import encode_frame
from models.transactions import TRANSACTION_SCHEMA, generate_transactions


def test_encode_frame_matches_record_encoding() -> None:
    frame = generate_transactions(300, seed=5).drop(columns="is_fraud")
    encoded = encode_frame(TRANSACTION_SCHEMA, frame)
    assert encoded.valid.all()
    np.testing.assert_array_equal(encoded.matrix, TRANSACTION_SCHEMA.encode_records(frame.to_dict("records")))


def test_encode_frame_keeps_reasons_for_bad_rows() -> None:
    frame = generate_transactions(10, seed=5).drop(columns="is_fraud")
    frame["merchant_category"] = frame["merchant_category"].astype(object)
    frame.loc[2, "merchant_category"] = "casino"
    frame.loc[5, "amount"] = np.nan
    frame["card_present"] = frame["card_present"].astype(object)
    frame.loc[7, "card_present"] = "maybe"
    encoded = encode_frame(TRANSACTION_SCHEMA, frame)
    assert encoded.valid.sum() == 7
    assert len(encoded.matrix) == 7
    assert set(encoded.reasons) == {2, 5, 7}
    assert "merchant_category" in encoded.reasons[2]
    assert "amount" in encoded.reasons[5]
    assert "card_present" in encoded.reasons[7]


def test_encode_frame_reads_text_booleans() -> None:
    frame = generate_transactions(4, seed=5).drop(columns="is_fraud")
    frame["card_present"] = ["true", "False", "1", "0"]
    encoded = encode_frame(TRANSACTION_SCHEMA, frame)
    assert encoded.valid.all()
    assert encoded.matrix[:, TRANSACTION_SCHEMA.names.index("card_present")].tolist() == [1, 0, 1, 0]


def test_encode_frame_names_missing_columns() -> None:
    with pytest.raises(InvalidInput) as info:
        encode_frame(TRANSACTION_SCHEMA, pd.DataFrame({"amount": [1.0]}))
    assert info.value.field == "hour"
