"""Late events: reading what was recorded, and re-driving the ones parked as dead letters.

Every late event is a row of ``<projection>__late_events`` with its lateness and what was done
with it (``amend``, ``drop``, ``dead_letter``, and ``redriven`` once a parked one counted after
all). Re-driving is an operator's decision, so it goes into the log: :func:`redrive_late`
appends a ``Clock.LateAccepted`` record to the late event's own partition, after the event;
the projection applies the parked payload when it reaches that record. A rebuild parks the
event again and re-drives it again at the same place, so the tables stay identical.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from framework.codec import codec
from framework.database import read_only
from framework.errors import ConfigurationError
from framework.persistence import EventStore, Positions, RecordedEvent
from framework.positions import reporting_missing_tables
from framework.streaming._clock import accept_late
from framework.streaming._values import utc

if TYPE_CHECKING:
    from framework.streaming._projection import Stream, StreamContext, StreamProjection

__all__ = ["LateEvent", "late_events", "redrive_late"]

ACTIONS = ("amend", "drop", "dead_letter", "redriven")


@dataclass(frozen=True)
class LateEvent:
    """One late event as recorded: where it was in the log, its time, how late, and what was
    done with it."""

    stream: str
    partition: int
    offset: int
    event_type: str
    aggregate_id: str
    event_time: datetime
    window_start: datetime | None
    late_by_ms: int
    action: str

    def as_json(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "position": f"{self.partition}:{self.offset}",
            "event_type": self.event_type,
            "aggregate_id": self.aggregate_id,
            "event_time": self.event_time.isoformat(),
            "window_start": self.window_start.isoformat() if self.window_start else None,
            "late_by_seconds": self.late_by_ms / 1000,
            "action": self.action,
        }


def late_events(
    projection: StreamProjection,
    engine: Engine,
    *,
    stream: str | None = None,
    action: str | None = None,
    limit: int | None = None,
) -> list[LateEvent]:
    """The projection's late events, in log order (partition, offset); ``stream`` and
    ``action`` filter them."""
    if stream is not None and stream not in projection._streams:
        raise ConfigurationError(
            f"{projection.name} has no stream {stream!r}; it has {sorted(projection._streams)}"
        )
    if action is not None and action not in ACTIONS:
        raise ConfigurationError(f"action must be one of {ACTIONS}, not {action!r}")
    table = projection._keel_late_events
    query = sa.select(table).order_by(table.c.partition, table.c.offset, table.c.stream)
    if stream is not None:
        query = query.where(table.c.stream == stream)
    if action is not None:
        query = query.where(table.c.action == action)
    with (
        reporting_missing_tables(engine, projection.name, [table]),
        engine.connect() as conn,
        read_only(conn).begin(),
    ):
        return [
            LateEvent(
                stream=row.stream,
                partition=row.partition,
                offset=row.offset,
                event_type=row.event_type,
                aggregate_id=row.aggregate_id,
                event_time=utc(row.event_time),
                window_start=utc(row.window_start) if row.window_start else None,
                late_by_ms=row.late_by_ms,
                action=row.action,
            )
            for row in conn.execute(query.limit(limit))
        ]


def redrive_late(
    store: EventStore,
    projection: StreamProjection,
    engine: Engine,
    *,
    stream: str | None = None,
    positions: Iterable[tuple[int, int]] | None = None,
) -> Positions:
    """Re-drive late events parked as dead letters (all of them, those of ``stream``, or those
    at ``positions``): append one ``Clock.LateAccepted`` per event. The projection's workers
    apply the parked payload when they reach the record; a second re-drive of the same event
    does nothing.
    A position that holds no parked late event is a :class:`ConfigurationError`."""
    parked = late_events(projection, engine, stream=stream, action="dead_letter")
    if positions is not None:
        wanted = set(positions)
        chosen = [e for e in parked if (e.partition, e.offset) in wanted]
        missing = wanted - {(e.partition, e.offset) for e in chosen}
        if missing:
            shown = ", ".join(f"{p}:{o}" for p, o in sorted(missing))
            raise ConfigurationError(
                f"no late event of {projection.name} is parked at {shown} (see its late events)"
            )
        parked = chosen
    written: Positions = {}
    for late in parked:
        written.update(
            accept_late(store, projection.name, late.stream, late.partition, late.offset)
        )
    return written


def accept(
    projection: StreamProjection, ctx: StreamContext, stream: Stream, partition: int, offset: int
) -> None:
    """Apply the late event ``stream`` parked at ``partition:offset`` (``Clock.LateAccepted``
    reached): as ``late="amend"`` would have, once."""
    table = projection._keel_late_events
    where = (
        table.c.stream == stream.attr,
        table.c.partition == partition,
        table.c.offset == offset,
    )
    row = ctx.conn.execute(sa.select(table).where(*where)).first()
    if row is None or row.action != "dead_letter" or row.payload is None:
        return  # nothing parked there, or re-driven already
    recorded = RecordedEvent(
        aggregate_id=UUID(row.aggregate_id),
        version=row.version or 0,
        topic=row.event_type,
        state=bytes(row.payload),
        partition=partition,
        offset=offset,
    )
    envelope = codec.decode(recorded)
    ctx.accepting = (partition, offset)
    try:
        stream.apply(projection, ctx, envelope.event, envelope)
    finally:
        ctx.accepting = None
    ctx.conn.execute(table.update().where(*where).values(action="redriven"))
