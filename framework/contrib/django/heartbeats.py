"""Signs of life of projection workers and background rebuilds, for the projections page.

The framework records where a projection stands (its positions) but not whether anything is
still moving it. Each Django-run worker writes a row here every few seconds while it polls,
and on every batch it applies (``applied_at``, ``applied``); a rebuild started from the admin
writes its progress. The page then shows a stopped worker as stopped, not merely as "lag 0".

The table lives in the read-model database next to the positions, and is created on first use
(it is operational state, not a read model: nothing is lost if it is dropped).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

__all__ = [
    "Beat",
    "Pulse",
    "beat",
    "lag_samples",
    "read_beats",
    "read_lag",
    "record_lag",
    "table",
]

metadata = sa.MetaData()

table = sa.Table(
    "keel_heartbeats",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("applied", sa.BigInteger, nullable=False, default=0),
    sa.Column("progress", sa.Float, nullable=True),
    sa.Column("detail", sa.String(500), nullable=True),
)

lag_samples = sa.Table(
    "keel_lag_samples",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("at", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("lag", sa.BigInteger, nullable=False),
)

KEEP_SAMPLES = dt.timedelta(hours=24)
"""How long lag samples are kept (older ones are deleted as new ones arrive)."""

STALE_AFTER = 15.0
"""Seconds without a beat after which a worker counts as stopped (it beats every 2-5 s)."""

_created: set[int] = set()
_lock = threading.Lock()


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:200]


def _ensure(engine: sa.Engine) -> None:
    if id(engine) in _created:
        return
    with _lock:
        if id(engine) not in _created:
            metadata.create_all(engine, checkfirst=True)
            _created.add(id(engine))


@dataclass(frozen=True)
class Beat:
    """The last sign of life of a worker (``kind="worker"``) or a rebuild."""

    name: str
    kind: str
    owner: str
    beat_at: dt.datetime
    applied_at: dt.datetime | None
    applied: int
    progress: float | None
    detail: str | None

    def age(self, now: dt.datetime | None = None) -> float:
        now = now or dt.datetime.now(dt.UTC)
        beat = self.beat_at if self.beat_at.tzinfo else self.beat_at.replace(tzinfo=dt.UTC)
        return max(0.0, (now - beat).total_seconds())

    @property
    def alive(self) -> bool:
        return self.age() < STALE_AFTER


def beat(
    engine: sa.Engine,
    name: str,
    *,
    kind: str = "worker",
    applied: int = 0,
    progress: float | None = None,
    detail: str | None = None,
) -> None:
    """Record a sign of life; ``applied`` events add to the count and set ``applied_at``."""
    _ensure(engine)
    now = dt.datetime.now(dt.UTC)
    values: dict[str, Any] = {
        "kind": kind,
        "owner": _owner(),
        "beat_at": now,
        "progress": progress,
        "detail": (detail or "")[:500] or None,
    }
    with engine.begin() as conn:
        updated = conn.execute(
            table.update()
            .where(table.c.name == name)
            .values(
                **values,
                applied=table.c.applied + applied,
                **({"applied_at": now} if applied else {}),
            )
        ).rowcount
        if not updated:
            conn.execute(
                table.insert().values(
                    name=name, applied=applied, applied_at=now if applied else None, **values
                )
            )


def read_beats(engine: sa.Engine) -> dict[str, Beat]:
    """Every recorded beat, by name (empty when nothing ever beat)."""
    _ensure(engine)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table)).all()
    return {row.name: Beat(**row._mapping) for row in rows}


class Pulse:
    """A throttled beater for one worker: call it on every poll; it writes at most every
    ``interval`` seconds, or at once when events were applied."""

    def __init__(self, engine: sa.Engine, name: str, interval: float = 2.0) -> None:
        self.engine = engine
        self.name = name
        self.interval = interval
        self.last = 0.0
        self.pending = 0

    def __call__(self, applied: int = 0, *, flush: bool = False) -> None:
        self.pending += applied
        now = time.monotonic()
        if now - self.last < self.interval and not (flush and self.pending):
            return
        self.last = now
        try:
            beat(self.engine, self.name, applied=self.pending)
            self.pending = 0
        except sa.exc.SQLAlchemyError:  # the worker's own transactions report the outage
            pass


def record_lag(engine: sa.Engine, name: str, lag: int) -> None:
    """Keep one lag sample (events between a worker's positions and the head)."""
    _ensure(engine)
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        conn.execute(lag_samples.insert().values(name=name, at=now, lag=lag))
        conn.execute(lag_samples.delete().where(lag_samples.c.at < now - KEEP_SAMPLES))


def read_lag(
    engine: sa.Engine, since: dt.timedelta = dt.timedelta(hours=1)
) -> dict[str, list[tuple[dt.datetime, int]]]:
    """The lag samples of the last ``since``, per projection, oldest first."""
    _ensure(engine)
    start = dt.datetime.now(dt.UTC) - since
    query = (
        sa.select(lag_samples)
        .where(lag_samples.c.at >= start)
        .order_by(lag_samples.c.name, lag_samples.c.at)
    )
    found: dict[str, list[tuple[dt.datetime, int]]] = {}
    with engine.connect() as conn:
        for row in conn.execute(query):
            moment = row.at if row.at.tzinfo else row.at.replace(tzinfo=dt.UTC)
            found.setdefault(row.name, []).append((moment, int(row.lag)))
    return found
