"""Signs of life of projection workers and background rebuilds, for the projections page.

The framework records where a projection stands (its positions) but not whether anything is
still moving it. Each Django-run worker notes a beat on every poll and the events of every
batch (:class:`Pulse`); a thread of the process writes them here every two seconds, with a lag
sample every ten, so the poll loop never waits for this table. A rebuild started from the
admin writes its progress. The page then shows a stopped worker as stopped (its last beat
goes stale), not merely as "lag 0".

The table lives in the read-model database next to the positions, and is created on first use
(it is operational state, not a read model: nothing is lost if it is dropped).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from framework.database import serialize_ddl

__all__ = [
    "Beat",
    "Pulse",
    "beat",
    "lag_samples",
    "owner",
    "read_beats",
    "read_lag",
    "read_samples",
    "record_lag",
    "record_samples",
    "samples",
    "table",
]

log = logging.getLogger(__name__)

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

samples = sa.Table(
    "keel_samples",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("metric", sa.String(50), primary_key=True),
    sa.Column("at", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("value", sa.Float, nullable=False),
)
"""Other figures over time, beside the lag: ``throughput`` (events applied per second since
the previous sample) and ``dead_letters``, for the projections page's charts."""

KEEP_SAMPLES = dt.timedelta(hours=24)
"""How long lag samples are kept (older ones are deleted as new ones arrive)."""

STALE_AFTER = 15.0
"""Seconds without a beat after which a worker counts as stopped (it beats every 2-5 s)."""

_created: set[int] = set()
_lock = threading.Lock()


def owner() -> str:
    """This process, as heartbeats name it (``host:pid``)."""
    return f"{socket.gethostname()}:{os.getpid()}"[:200]


def _ensure(engine: sa.Engine) -> None:
    if id(engine) in _created:
        return
    with _lock:
        if id(engine) not in _created:
            with engine.begin() as conn:
                serialize_ddl(conn)
                metadata.create_all(conn, checkfirst=True)
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
        "owner": owner(),
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
    """One worker's heartbeat. Calling it (on every poll, with the events applied) only notes
    the time in memory; a background thread of the process writes every pulse's last beat
    every ``interval`` seconds and takes the lag samples, so the worker's poll loop never
    waits for the database. A worker that stops polling stops beating: its row goes stale."""

    def __init__(
        self,
        engine: sa.Engine,
        name: str,
        *,
        sample: Callable[[], int | None] | None = None,
        dead_letters: Callable[[], int | None] | None = None,
        interval: float = 2.0,
        sample_every: float = 10.0,
    ) -> None:
        self.engine = engine
        self.name = name
        self.sample = sample
        self.dead_letters = dead_letters
        self.total = 0  # events applied by this pulse's worker, for the throughput samples
        self._sampled_total = 0
        self.interval = interval
        self.sample_every = sample_every
        self.beat_at: dt.datetime | None = None
        self.pending = 0
        self.written: dt.datetime | None = None
        self.sampled = 0.0
        self._lock = threading.Lock()
        _writer.add(self)

    def __call__(self, applied: int = 0) -> None:
        with self._lock:
            self.beat_at = dt.datetime.now(dt.UTC)
            self.pending += applied
            self.total += applied

    def flush(self) -> None:
        """Write the last beat now (the writer thread calls this; so does a stopping worker)."""
        with self._lock:
            beat_at, applied = self.beat_at, self.pending
            self.pending = 0
            previous_total = self._sampled_total
        if beat_at is None or (beat_at == self.written and not applied):
            return
        try:
            _write(self.engine, self.name, beat_at, applied)
            self.written = beat_at
        except Exception as error:  # the worker's own transactions report outages
            with self._lock:
                self.pending += applied
            log.debug("no heartbeat for %s: %s", self.name, error)
        now = time.monotonic()
        if self.sample is not None and now - self.sampled >= self.sample_every:
            elapsed, self.sampled = now - self.sampled, now
            try:
                lag = self.sample()
                if lag is not None:
                    record_lag(self.engine, self.name, lag)
                figures: dict[str, float] = {}
                with self._lock:
                    total, self._sampled_total = self.total, self.total
                if elapsed < 10 * self.sample_every:  # not the first sample
                    figures["throughput"] = (total - previous_total) / elapsed
                dead = self.dead_letters() if self.dead_letters is not None else None
                if dead is not None:
                    figures["dead_letters"] = dead
                record_samples(self.engine, self.name, figures)
            except Exception as error:  # a missed sample is no reason to stop
                log.debug("no lag sample for %s: %s", self.name, error)

    def close(self) -> None:
        self.flush()
        _writer.discard(self)


def _write(engine: sa.Engine, name: str, beat_at: dt.datetime, applied: int) -> None:
    _ensure(engine)
    values: dict[str, Any] = {"kind": "worker", "owner": owner(), "beat_at": beat_at}
    with engine.begin() as conn:
        updated = conn.execute(
            table.update()
            .where(table.c.name == name)
            .values(
                **values,
                progress=None,
                detail=None,
                applied=table.c.applied + applied,
                **({"applied_at": beat_at} if applied else {}),
            )
        ).rowcount
        if not updated:
            conn.execute(
                table.insert().values(
                    name=name, applied=applied, applied_at=beat_at if applied else None, **values
                )
            )


class _Writer:
    """The process's heartbeat thread: flushes every registered pulse every second or two."""

    def __init__(self) -> None:
        self.pulses: weakref.WeakSet[Pulse] = weakref.WeakSet()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def add(self, pulse: Pulse) -> None:
        with self.lock:
            self.pulses.add(pulse)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self.run, name="keel-heartbeats", daemon=True)
                self.thread.start()

    def discard(self, pulse: Pulse) -> None:
        with self.lock:
            self.pulses.discard(pulse)

    def run(self) -> None:
        while True:
            with self.lock:
                pulses = list(self.pulses)
            wait = min((p.interval for p in pulses), default=2.0)
            for pulse in pulses:
                try:
                    pulse.flush()
                except Exception as error:  # this thread must outlive any one database
                    log.debug("heartbeat of %s failed: %s", pulse.name, error)
            time.sleep(wait)


_writer = _Writer()


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


def record_samples(engine: sa.Engine, name: str, figures: dict[str, float]) -> None:
    """Keep one sample of each figure (``throughput``, ``dead_letters``)."""
    if not figures:
        return
    _ensure(engine)
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        conn.execute(
            samples.insert(),
            [{"name": name, "metric": m, "at": now, "value": v} for m, v in figures.items()],
        )
        conn.execute(samples.delete().where(samples.c.at < now - KEEP_SAMPLES))


def read_samples(
    engine: sa.Engine, metric: str, since: dt.timedelta = dt.timedelta(hours=1)
) -> dict[str, list[tuple[dt.datetime, float]]]:
    """One figure's samples of the last ``since``, per projection, oldest first."""
    _ensure(engine)
    start = dt.datetime.now(dt.UTC) - since
    query = (
        sa.select(samples)
        .where(samples.c.metric == metric, samples.c.at >= start)
        .order_by(samples.c.name, samples.c.at)
    )
    found: dict[str, list[tuple[dt.datetime, float]]] = {}
    with engine.connect() as conn:
        for row in conn.execute(query):
            moment = row.at if row.at.tzinfo else row.at.replace(tzinfo=dt.UTC)
            found.setdefault(row.name, []).append((moment, float(row.value)))
    return found
