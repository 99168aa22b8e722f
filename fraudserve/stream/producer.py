"""Feeds transactions into the input stream: generated (seeded) or replayed from CSV / JSONL.

JSONL lines are sent untouched (a broken line reaches the dead-letter stream with its reason, as
it would in production). CSV rows are sent as JSON objects without the label column; an id
column, if named, becomes ``txn_id``. Extra columns are sent too: the worker rejects them by name.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fraudserve.errors import InvalidInput
from models.transactions import TRANSACTION_SCHEMA, generate_transactions

from .broker import Broker
from .messages import DATA_FIELD, TXN_ID

_GENERATE_PIECE_ROWS = 100_000
_CSV_CHUNK_ROWS = 50_000
_PACE_TICK_S = 0.01


@dataclass(frozen=True)
class ProduceReport:
    sent: int
    elapsed_s: float
    first_id: str | None
    last_id: str | None
    trimmed: int = 0
    kept_over_maxlen: int = 0

    @property
    def rate_per_s(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


def generated(n_rows: int, seed: int = 7) -> Iterator[dict[str, str]]:
    """Seeded transactions without their label, with txn_id ``gen-<seed>-<row>``."""
    for piece, start in enumerate(range(0, n_rows, _GENERATE_PIECE_ROWS)):
        frame = generate_transactions(min(_GENERATE_PIECE_ROWS, n_rows - start), seed=seed + piece)
        frame = frame.drop(columns=TRANSACTION_SCHEMA.label)
        frame.insert(0, TXN_ID, [f"gen-{seed}-{start + i}" for i in range(len(frame))])
        yield from _frame_messages(frame)


def from_file(path: Path, id_column: str | None = None) -> Iterator[dict[str, str]]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    yield {DATA_FIELD: line.rstrip("\n")}
    elif suffix == ".csv":
        with pd.read_csv(path, chunksize=_CSV_CHUNK_ROWS) as chunks:
            for chunk in chunks:
                if id_column is not None and id_column not in chunk.columns:
                    raise InvalidInput(f"no column {id_column!r} in {path}", field="--id-column")
                frame = chunk.drop(columns=[TRANSACTION_SCHEMA.label], errors="ignore")
                if id_column is not None:
                    frame = frame.rename(columns={id_column: TXN_ID})
                yield from _frame_messages(frame)
    else:
        raise InvalidInput(f"expected a .csv or .jsonl file, got {path.name!r}", field="--file")


def _frame_messages(frame: pd.DataFrame) -> Iterator[dict[str, str]]:
    text = frame.to_json(orient="records", lines=True)
    for line in text.splitlines():
        yield {DATA_FIELD: line}


def produce(
    broker: Broker,
    messages: Iterable[Mapping[str, str]],
    *,
    rate_per_s: float | None = None,
    chunk: int = 500,
    maxlen: int | None = None,
) -> ProduceReport:
    """Publishes in pipelined chunks; with ``rate_per_s``, paced to that rate (ticks of 10 ms).

    ``maxlen``: after each chunk the input is trimmed to that many entries, but only of messages every
    consumer group has acknowledged (``Broker.trim_input``); ``kept_over_maxlen`` reports the last excess kept.
    """
    started = time.perf_counter()
    sent = trimmed = kept = 0
    first: str | None = None
    last: str | None = None
    if rate_per_s is not None:
        chunk = max(1, min(chunk, int(rate_per_s * _PACE_TICK_S)))
    source = iter(messages)
    while batch := list(itertools.islice(source, chunk)):
        if rate_per_s is not None:
            delay = started + sent / rate_per_s - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        ids = broker.publish(batch)
        first = first or ids[0]
        last = ids[-1]
        sent += len(ids)
        if maxlen is not None:
            trim = broker.trim_input(maxlen)
            trimmed, kept = trimmed + trim.removed, trim.kept_over_maxlen
    return ProduceReport(sent, time.perf_counter() - started, first, last, trimmed, kept)
