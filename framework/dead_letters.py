"""Dead letters: events a projection could not apply, parked with the error, and re-driven
after a fix.

Policy (see :mod:`framework.applier`): sequenced per aggregate. When an event of an aggregate is
parked (reason ``failed``), every later event of that aggregate is parked behind it (reason
``held``) so the aggregate's rows never see its events out of order; other aggregates keep
flowing. :func:`redrive` applies one aggregate's parked events in order, in one transaction
that also deletes them; if one still fails, that aggregate's transaction rolls back and its
dead letters stay (with the new error), while the other aggregates go through.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Hashable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from framework.codec import codec
from framework.database import read_only
from framework.errors import ConfigurationError
from framework.persistence import RecordedEvent
from framework.positions import dead_letters_table, reporting_missing_tables
from framework.projection import Projection

__all__ = [
    "DeadLetter",
    "RedriveResult",
    "count",
    "discard",
    "list_dead_letters",
    "parked_fields",
    "redrive",
    "refuse_not_parked",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeadLetter:
    """A parked event, with where it was in the log and why it was parked."""

    id: int
    projection: str
    partition: int
    offset: int
    aggregate_id: str
    version: int
    event_type: str
    payload: bytes
    reason: str
    """``failed`` (its handler or decoding failed) or ``held`` (behind a failed event of the
    same aggregate)."""
    error_type: str
    error_message: str
    attempts: int
    created_at: datetime

    def recorded(self) -> RecordedEvent:
        """The event as the store recorded it."""
        return RecordedEvent(
            aggregate_id=UUID(self.aggregate_id),
            version=self.version,
            topic=self.event_type,
            state=self.payload,
            partition=self.partition,
            offset=self.offset,
        )


@dataclass
class RedriveResult:
    """What a re-drive did."""

    applied: int = 0
    """Dead letters applied and removed."""
    failed: dict[str, str] = field(default_factory=dict)
    """Aggregate id -> the error that still stops it (its dead letters stay)."""
    remaining: int = 0
    """Dead letters left for the projection after the re-drive."""


def parked_fields(event: RecordedEvent) -> dict[str, object]:
    """The dead-letter columns that identify ``event``, made to fit whatever the record held
    (parking must work for the very records that break every rule): a version outside the
    column's range becomes 0 and the type name is cut to printable text of the column's size.
    The payload is kept byte for byte."""
    version = event.version if 0 <= event.version <= _MAX_INT else 0
    event_type = "".join(c for c in event.topic if c.isprintable())
    return {
        "partition": event.partition,
        "offset": event.offset,
        "aggregate_id": str(event.aggregate_id),
        "version": version,
        "event_type": event_type[:_MAX_TYPE],
        "payload": bytes(event.state),
    }


_MAX_INT = 2**31 - 1  # the version column is a 32-bit integer
_MAX_TYPE = 300  # the length of the event_type column


def _key(projection: Projection | str) -> str:
    return projection if isinstance(projection, str) else projection.key


def _tables(engine: Engine, projection: Projection | str) -> AbstractContextManager[None]:
    return reporting_missing_tables(engine, _key(projection), [dead_letters_table])


def list_dead_letters(
    engine: Engine, projection: Projection | str, *, limit: int | None = None
) -> list[DeadLetter]:
    """The projection's dead letters, oldest position first."""
    t = dead_letters_table
    query = (
        sa.select(t)
        .where(t.c.projection == _key(projection))
        .order_by(t.c.partition, t.c.offset)
        .limit(limit)
    )
    with _tables(engine, projection), engine.connect() as conn, read_only(conn).begin():
        return [
            DeadLetter(**{**row._asdict(), "payload": bytes(row.payload)})
            for row in conn.execute(query)
        ]


def count(engine: Engine, projection: Projection | str) -> int:
    """How many dead letters the projection has."""
    t = dead_letters_table
    query = sa.select(sa.func.count()).where(t.c.projection == _key(projection))
    with _tables(engine, projection), engine.connect() as conn, read_only(conn).begin():
        return int(conn.execute(query).scalar_one())


def discard(engine: Engine, projection: Projection | str, ids: Sequence[int]) -> int:
    """Delete dead letters without applying them (the read model will never see them)."""
    t = dead_letters_table
    with _tables(engine, projection), engine.begin() as conn:
        result = conn.execute(
            t.delete().where(t.c.projection == _key(projection), t.c.id.in_(list(ids)))
        )
    return int(result.rowcount)


def redrive(
    engine: Engine, projection: Projection, *, aggregate_ids: Sequence[str] | None = None
) -> RedriveResult:
    """Apply the projection's dead letters again (after a fix), each aggregate's in order and
    in one transaction with their removal. ``aggregate_ids`` limits it to some aggregates."""
    result = RedriveResult()
    letters = list_dead_letters(engine, projection)
    if aggregate_ids is not None:
        wanted = {str(a) for a in aggregate_ids}
        letters = [d for d in letters if d.aggregate_id in wanted]
    letters.sort(key=lambda d: (d.aggregate_id, d.partition, d.offset))
    topics = projection.handled_topics()
    t = dead_letters_table
    for aggregate_id, group in groupby(letters, key=lambda d: d.aggregate_id):
        parked = list(group)
        try:
            with engine.begin() as conn:
                for letter in parked:
                    if letter.event_type in topics:
                        projection.apply(codec.decode(letter.recorded()), conn)
                gone = conn.execute(t.delete().where(t.c.id.in_([d.id for d in parked])))
                if gone.rowcount != len(parked):
                    raise _Raced(f"another re-drive of {aggregate_id} ran at the same time")
            result.applied += len(parked)
        except Exception as error:
            message = f"{type(error).__name__}: {error}"
            result.failed[aggregate_id] = message
            log.warning("re-drive of %s for %s failed: %s", aggregate_id, projection.key, message)
            with engine.begin() as conn:
                conn.execute(
                    t.update()
                    .where(t.c.id == parked[0].id)
                    .values(
                        error_type=f"{type(error).__module__}.{type(error).__qualname__}",
                        error_message=str(error)[:4000],
                        attempts=t.c.attempts + 1,
                    )
                )
    result.remaining = count(engine, projection)
    return result


def refuse_not_parked(wanted: Iterable[Hashable], parked: Collection[Hashable], what: str) -> None:
    """A ConfigurationError naming those of ``wanted`` that are not ``parked``, before
    anything is re-driven: a mistyped id would otherwise re-drive nothing and look like
    success ("re-drove 0"). ``what`` names them (``"dead letter id(s)"``)."""
    missing = [w for w in dict.fromkeys(wanted) if w not in parked]
    if missing:
        raise ConfigurationError(
            f"not parked: {what} {', '.join(map(str, missing))}; nothing was re-driven"
        )


class _Raced(Exception):
    pass
