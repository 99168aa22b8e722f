"""fraud-stream without a broker: message validation, batch planning, producer sources, scoring contract."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from fraudserve.errors import InvalidInput, PoisonMessage
from fraudserve.local import local_core
from fraudserve.settings import Settings
from fraudserve.stream.broker import DeadLetter, Delivery, Scored
from fraudserve.stream.messages import dead_letter_fields, decode_message, encode_message
from fraudserve.stream.producer import from_file, generated
from fraudserve.stream.worker import StreamWorker, WorkerConfig, plan
from models.transactions import TRANSACTION_SCHEMA, generate_transactions

SCHEMA = TRANSACTION_SCHEMA


def good_record() -> dict[str, object]:
    return generate_transactions(1, seed=5).drop(columns="is_fraud").iloc[0].to_dict()


def test_a_valid_message_decodes_to_the_schema_row() -> None:
    record = json.loads(encode_message(good_record(), txn_id=42)["data"])
    txn = decode_message("1-0", {"data": json.dumps(record)}, SCHEMA)
    assert txn.source_id == "1-0"
    assert txn.txn_id == "42"
    record.pop("txn_id")
    np.testing.assert_array_equal(txn.row, SCHEMA.encode_records([record])[0])


@pytest.mark.parametrize(
    ("fields", "field", "text"),
    [
        ({"payload": "{}"}, "data", "no 'data' field"),
        ({"data": "{not json"}, "data", "not valid JSON"),
        ({"data": "[1, 2]"}, "data", "JSON object"),
        ({"data": {"amount": -5.0}}, "data.amount", "out of range"),
        ({"data": {"merchant_category": "casino"}}, "data.merchant_category", "unknown category"),
        ({"data": {"hour": None}}, "data.hour", "required"),
        ({"data": {"card_present": "yes"}}, "data.card_present", "boolean"),
        ({"data": {"customer": "c1"}}, "data.customer", "unknown field"),
        ({"data": {"txn_id": [1]}}, "data.txn_id", "string or an integer"),
    ],
)
def test_a_bad_message_names_its_field(fields: dict[str, object], field: str, text: str) -> None:
    if isinstance(fields.get("data"), dict):
        fields = {"data": json.dumps({**good_record(), **fields["data"]})}  # type: ignore[dict-item]
    with pytest.raises(InvalidInput) as caught:
        decode_message("7-0", fields, SCHEMA)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert text in caught.value.message


def test_dead_letter_fields_keep_reason_field_and_raw_message() -> None:
    letter = dead_letter_fields(
        "9-1", {"data": "{x"}, InvalidInput("bad", field="data.hour"), deliveries=1, consumer="c"
    )
    assert letter == {
        "source_id": "9-1",
        "reason": "invalid_input",
        "field": "data.hour",
        "message": "bad",
        "data": "{x",
        "deliveries": "1",
        "consumer": "c",
    }
    poison = dead_letter_fields("9-2", {"other": "1"}, PoisonMessage("too often"), deliveries=6, consumer="c")
    assert (poison["reason"], poison["data"], poison["deliveries"]) == ("max_deliveries", '{"other": "1"}', "6")
    crash = dead_letter_fields("9-3", {"data": "{}"}, ZeroDivisionError("boom"), deliveries=1, consumer="c")
    assert (crash["reason"], crash["message"]) == ("internal", "ZeroDivisionError: boom")


def test_plan_isolates_redelivered_messages_and_retires_poison() -> None:
    deliveries = [Delivery("1-0", {}, 1), Delivery("2-0", {}, 2), Delivery("3-0", {}, 4), Delivery("4-0", {}, 1)]
    deliveries.append(Delivery("5-0", {}, 3))
    parts = plan(deliveries, max_deliveries=3)
    assert [d.id for d in parts.batch] == ["1-0", "4-0"]
    assert [d.id for d in parts.singles] == ["2-0", "5-0"]
    assert [d.id for d in parts.dead] == ["3-0"]


def test_generated_messages_are_seeded_valid_and_carry_txn_ids() -> None:
    first = list(generated(50, seed=3))
    assert first == list(generated(50, seed=3))
    txns = [decode_message(f"{i}-0", m, SCHEMA) for i, m in enumerate(first)]
    assert [t.txn_id for t in txns] == [f"gen-3-{i}" for i in range(50)]


def test_file_sources_csv_and_jsonl(tmp_path: Path) -> None:
    frame = generate_transactions(20, seed=8)
    frame.insert(0, "id", [f"r{i}" for i in range(20)])
    frame.to_csv(tmp_path / "t.csv", index=False)
    csv_messages = list(from_file(tmp_path / "t.csv", id_column="id"))
    txns = [decode_message("1-0", m, SCHEMA) for m in csv_messages]
    assert [t.txn_id for t in txns] == [f"r{i}" for i in range(20)]

    lines = ['{"amount": 1}', "", "{broken"]
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    assert [m["data"] for m in from_file(tmp_path / "t.jsonl")] == ['{"amount": 1}', "{broken"]

    with pytest.raises(InvalidInput, match="no column 'missing'"):
        list(from_file(tmp_path / "t.csv", id_column="missing"))
    with pytest.raises(InvalidInput, match=r"\.csv or \.jsonl"):
        list(from_file(tmp_path / "t.parquet"))


def test_a_micro_batch_scores_like_the_core_and_dead_letters_only_bad_rows(trained: str) -> None:
    core = local_core(Settings(model_version=trained))
    frame = generate_transactions(40, seed=21).drop(columns="is_fraud")
    records = frame.to_dict("records")
    batch = [Delivery(f"{i}-0", encode_message(r, txn_id=f"t{i}")) for i, r in enumerate(records)]
    batch[7] = Delivery("7-0", {"data": json.dumps({**records[7], "hour": 25})})
    config = WorkerConfig("c1", batch_size=64, block_ms=1, claim_idle_ms=1, claim_interval_ms=1, max_deliveries=3)
    # No broker is touched by `process`: decode -> score -> outcomes.
    with StreamWorker(None, core, config) as worker:  # type: ignore[arg-type]
        outcomes = worker.process(batch)

    assert [o.source_id for o in outcomes if isinstance(o, DeadLetter)] == ["7-0"]
    scored = {o.source_id: o for o in outcomes if isinstance(o, Scored)}
    assert len(scored) == 39
    good = [r for i, r in enumerate(records) if i != 7]
    expected = asyncio.run(core.predict(good, transport="test"))
    got = [float(scored[f"{i}-0"].fields["fraud_probability"]) for i in range(40) if i != 7]
    np.testing.assert_allclose(got, expected.probabilities, atol=1e-6)
    flagged = [scored[f"{i}-0"].alert for i in range(40) if i != 7]
    assert flagged == expected.decisions.tolist()
    assert scored["0-0"].fields["txn_id"] == "t0"
    assert scored["0-0"].fields["model_version"] == trained
