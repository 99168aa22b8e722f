"""What the worker needs from a message broker, so that Kafka (or NATS) can slot in later."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Delivery:
    """One message handed to this consumer; ``deliveries`` counts this delivery too (1 = first).

    ``appended_s``: when the producer appended it (Unix seconds), if the broker knows.
    """

    id: str
    fields: Mapping[str, str]
    deliveries: int = 1
    appended_s: float | None = None


@dataclass(frozen=True)
class ScoreLayout:
    """The fields of a batch's score entries: ``columns`` vary per message, ``shared`` are the same for all.

    A broker may send the shared fields once per batch rather than once per message.
    """

    columns: tuple[str, ...]
    shared: tuple[tuple[str, str], ...]


# Not frozen: one is made per message, and a frozen dataclass's __init__ costs 3x (object.__setattr__ per field).
@dataclass(slots=True)
class Scored:
    """A score to write to the output stream, and to the alert stream when ``alert``.

    ``values`` are those of the last ``len(values)`` of ``layout.columns`` (an optional leading column,
    such as a missing txn_id, is left out).
    """

    source_id: str
    values: tuple[str, ...]
    alert: bool
    layout: ScoreLayout

    @property
    def fields(self) -> dict[str, str]:
        columns = self.layout.columns[len(self.layout.columns) - len(self.values) :]
        return {"source_id": self.source_id, **dict(zip(columns, self.values, strict=True)), **dict(self.layout.shared)}


@dataclass(frozen=True)
class DeadLetter:
    """A message that cannot be scored, with its reason, for the dead-letter stream."""

    source_id: str
    fields: Mapping[str, str]


Outcome = Scored | DeadLetter


@dataclass(frozen=True)
class CommitResult:
    written: int
    duplicates: int = 0


@dataclass(frozen=True)
class Reclaimed:
    deliveries: list[Delivery]
    trimmed_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Trimmed:
    """``removed`` entries trimmed; ``kept_over_maxlen`` kept beyond maxlen because a group still needs them."""

    removed: int
    kept_over_maxlen: int


@dataclass(frozen=True)
class GroupStats:
    length: int
    lag: int | None
    pending: int
    consumers: dict[str, int]
    outputs: dict[str, int]


class Broker(Protocol):
    """A partitioned log with consumer groups, read in batches, acknowledged with the outputs."""

    def ensure_group(self) -> None:
        """Create the consumer group (and the input stream) if missing; start at the oldest message."""

    def read(self, count: int, block_ms: int) -> list[Delivery]:
        """Up to ``count`` messages never delivered to the group; waits at most ``block_ms`` for the first."""
        ...

    def reclaim(self, min_idle_ms: int, count: int) -> Reclaimed:
        """Take over messages another consumer read but did not acknowledge for ``min_idle_ms``."""
        ...

    def commit(self, outcomes: Sequence[Outcome]) -> CommitResult:
        """Atomically write each outcome and acknowledge its source message.

        Idempotent: an outcome whose source message was already acknowledged is not written again.
        """
        ...

    def publish(self, payloads: Sequence[Mapping[str, str]]) -> list[str]:
        """Append messages to the input stream; returns their ids."""
        ...

    def trim_input(self, maxlen: int) -> Trimmed:
        """Trim the input's oldest entries down to ``maxlen``, never one a consumer group has not acknowledged.

        Neither undelivered nor pending messages are removed: the stream stays longer than ``maxlen`` instead.
        """
        ...

    def stats(self) -> GroupStats: ...

    def close(self) -> None: ...
