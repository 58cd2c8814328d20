"""A change of one legacy row, and what every change source provides."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol
from uuid import NAMESPACE_URL, UUID, uuid5

__all__ = ["ChangeSource", "Lag", "Op", "RowChange", "change_command_id"]

Op = Literal["insert", "update", "delete", "read"]
"""``read`` is a row of the initial snapshot (it existed before the feed started)."""

_IDS = uuid5(NAMESPACE_URL, "keel:cdc")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def change_command_id(feed: str, table: str, key: Mapping[str, Any], position: str, n: int) -> UUID:
    """The id of the ``n``-th command translated from a change (C1): the same change read
    again, after a crash or a redelivery, yields the same ids, and the store runs each once."""
    return uuid5(_IDS, _canonical([feed, table, dict(key), position, n]))


@dataclass(frozen=True)
class RowChange:
    """One inserted, updated, deleted (or snapshot-read) legacy row.

    ``position`` names the change in its source (``"<xid>:<seq>"`` for the trigger changelog,
    ``"lsn:<lsn>"`` for Debezium) and, with the key, makes the commands' ids.
    ``partition``/``offset`` place it for dead letters (the changelog's ``seq``, or the
    Kafka partition and offset of a Debezium record)."""

    table: str
    op: Op
    key: Mapping[str, Any]
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None
    position: str
    partition: int = 0
    offset: int = 0
    committed_at: datetime | None = None
    cursor: str = field(default="", compare=False)
    """The source's cursor just past this change (what the feed stores once it is done)."""

    @property
    def row(self) -> Mapping[str, Any]:
        """The row as it is after the change (as it was, for a delete)."""
        return self.after if self.after is not None else (self.before or {})

    def changed(self, *columns: str) -> bool:
        """Whether an update changed any of ``columns`` (inserts, reads and deletes: True).
        A source without the old row (Debezium without ``REPLICA IDENTITY FULL``) reports
        every update as a change."""
        if self.op != "update" or self.before is None or self.after is None:
            return True
        return any(self.before.get(c) != self.after.get(c) for c in columns)

    def to_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "op": self.op,
            "key": dict(self.key),
            "before": None if self.before is None else dict(self.before),
            "after": None if self.after is None else dict(self.after),
            "position": self.position,
            "partition": self.partition,
            "offset": self.offset,
            "committed_at": None if self.committed_at is None else self.committed_at.isoformat(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RowChange:
        committed = data.get("committed_at")
        return cls(
            table=data["table"],
            op=data["op"],
            key=data["key"],
            before=data.get("before"),
            after=data.get("after"),
            position=data["position"],
            partition=int(data.get("partition", 0)),
            offset=int(data.get("offset", 0)),
            committed_at=None if committed is None else datetime.fromisoformat(committed),
        )


@dataclass(frozen=True)
class Lag:
    """How far a feed is behind its source."""

    changes: int
    """Changes in the source past the feed's cursor (including any not yet readable)."""
    seconds: float
    """Age of the oldest of them (0 when caught up)."""


class ChangeSource(Protocol):
    """Where a feed's changes come from. A source is read from a cursor the feed stores
    (an opaque string; ``None`` before the first change); it never stores one itself."""

    name: str
    """What the source reads, e.g. ``crm.customers``: part of every command id."""

    def read(self, cursor: str | None, limit: int) -> Sequence[RowChange]:
        """Up to ``limit`` changes after ``cursor``, in order; each carries the cursor just
        past it (the feed stores the last one's). An empty result means none is readable yet.
        A source may put a row's earlier change before a later one that its own order has
        first, and deliver it again in its place (its commands then replay)."""
        ...

    def lag(self, cursor: str | None) -> Lag:
        """How far ``cursor`` is behind the source."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
