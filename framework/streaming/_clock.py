"""Tick records: the log's own clock, so idle partitions advance stream time deterministically.

A window closes when every partition's stream time has passed its end (see
:mod:`framework.streaming`). A partition that receives no events would hold every window open,
so ``tick`` appends a ``keel.Clock.Ticked(at=..., partitions=N)`` event to **every partition**
of the events topic. Ticks are records in the log: a rebuild sees the same ticks at the same
positions and closes the same windows, where a wall-clock idleness timeout would not.

Each partition has its own clock aggregate, with an id chosen so the store routes it there.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from framework.codec import codec
from framework.commands import Metadata
from framework.domain import Aggregate, event
from framework.errors import ConcurrencyError, ConfigurationError
from framework.persistence import EventStore, Positions

__all__ = ["Clock", "accept_late", "clock_id", "tick"]

_NAMESPACE = UUID("5b0e8f3e-2d43-4c39-9a57-6c1f1f7c7a10")


class Clock(Aggregate):
    """One partition's clock; its events only ever say what time it is."""

    type_name = "keel.Clock"

    @event("Started")
    def __init__(self, id: UUID, partition: int) -> None:
        self.partition = partition

    class Ticked(Aggregate.Event):
        at: datetime
        partitions: int

    class LateAccepted(Aggregate.Event):
        """An operator's decision, kept in the log: count the late event that ``stream`` of
        ``projection`` parked at ``offset`` of this partition (see :func:`accept_late`)."""

        projection: str
        stream: str
        offset: int

    @event(Ticked)
    def _ticked(self, at: datetime, partitions: int) -> None:
        self.at = at

    @event(LateAccepted)
    def _accepted(self, projection: str, stream: str, offset: int) -> None:
        pass


def clock_id(store: EventStore, partition: int) -> UUID:
    """The id of the clock aggregate the store routes to ``partition`` (stable per store)."""
    for attempt in range(100_000):
        candidate = uuid.uuid5(_NAMESPACE, f"{store.name}:{partition}:{attempt}")
        if store.partition_for(candidate) == partition:
            return candidate
    raise ConfigurationError(f"no clock id routes to partition {partition}")  # pragma: no cover


def tick(store: EventStore, at: datetime | None = None, *, attempts: int = 5) -> Positions:
    """Append a tick at ``at`` (default: now, UTC) to every partition of ``store``.

    This is the one place streaming reads the wall clock, and it writes what it read into the
    log, so every reader afterwards agrees on it."""
    moment = (at or datetime.now(UTC)).astimezone(UTC)
    written: Positions = {}
    for partition in range(store.partitions):
        fields = {"at": moment, "partitions": store.partitions}
        written.update(_append(store, partition, Clock.Ticked, fields, moment, attempts))
    return written


def accept_late(
    store: EventStore, projection: str, stream: str, partition: int, offset: int
) -> Positions:
    """Append ``Clock.LateAccepted`` to ``partition``: the late event that ``stream`` of
    ``projection`` parked as a dead letter at ``partition:offset`` is to count after all.

    The decision is a record in the log, after the late event in its own partition, so every
    worker and every rebuild applies it at the same place and the tables stay identical."""
    fields = {"projection": projection, "stream": stream, "offset": offset}
    return _append(store, partition, Clock.LateAccepted, fields, datetime.now(UTC), 5)


def _append(
    store: EventStore,
    partition: int,
    kind: type[Aggregate.Event],
    fields: dict[str, Any],
    moment: datetime,
    attempts: int,
) -> Positions:
    """Append a ``kind`` event to ``partition``'s clock (the first one also starts it)."""
    cid = clock_id(store, partition)
    for _ in range(attempts):
        history = store.read(cid)
        if not history:
            clock = Clock(cid, partition)
            if kind is Clock.Ticked:
                clock._ticked(**fields)
            else:
                clock._accepted(**fields)
            events = [codec.encode(e, Metadata()) for e in clock.collect_events()]
        else:
            made = kind(
                originator_id=cid,
                originator_version=history[-1].version + 1,
                timestamp=moment,
                **fields,
            )
            events = [codec.encode(made, Metadata())]
        try:
            return store.append(events)
        except ConcurrencyError:
            continue  # another writer of this clock got there first: read again
    return {}
