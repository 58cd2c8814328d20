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
from uuid import UUID

from framework.codec import codec
from framework.commands import Metadata
from framework.domain import Aggregate, event
from framework.errors import ConcurrencyError, ConfigurationError
from framework.persistence import EventStore, NewEvent, Positions

__all__ = ["Clock", "clock_id", "tick"]

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

    @event(Ticked)
    def _ticked(self, at: datetime, partitions: int) -> None:
        self.at = at


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
        cid = clock_id(store, partition)
        for _ in range(attempts):
            history = store.read(cid)
            events: list[NewEvent] = []
            if not history:
                clock = Clock(cid, partition)
                clock._ticked(moment, store.partitions)
                events = [codec.encode(e, Metadata()) for e in clock.collect_events()]
            else:
                version = history[-1].version + 1
                ticked = Clock.Ticked(  # type: ignore[call-arg]
                    originator_id=cid,
                    originator_version=version,
                    timestamp=moment,
                    at=moment,
                    partitions=store.partitions,
                )
                events = [codec.encode(ticked, Metadata())]
            try:
                written.update(store.append(events))
                break
            except ConcurrencyError:
                continue  # another ticker got there first: read again
    return written
