"""Rebuilding a read model without downtime, and bootstrapping a new one.

A rebuild runs the projection's handlers from position 0 (or ``from_positions``) into *shadow*
tables (``<table>__rebuild``: same columns and indexes) while queries keep reading the live
tables, and the live worker keeps them current. It reads the store directly, partition by
partition, with the same exactly-once machinery as the worker (its positions and dead letters
are kept under ``<projection>__rebuild``). Once it reaches the head it swaps, in ONE
transaction: the live tables are dropped, the shadow tables renamed in their place, and the live
positions and dead letters replaced by the shadow's. The live worker's next batch then finds the
positions moved (its guarded update fails), re-reads them and continues from the rebuilt
positions: events written during the rebuild, even during the swap, are applied once.

Progress (events done, rate, ETA) goes to a callback; :func:`console_progress` shows a ``rich``
bar on a terminal and log lines otherwise.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from framework.applier import Applier, ApplierStats
from framework.errors import ProjectionError, ProjectionStoppedError
from framework.persistence import EventStore
from framework.positions import dead_letters_table, now, positions_table, write_version
from framework.projection import SHADOW_SUFFIX, Projection
from framework.settings import ProjectionSettings, projection_settings

__all__ = ["RebuildProgress", "RebuildResult", "console_progress", "rebuild"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RebuildProgress:
    """A rebuild's progress, handed to the progress callback after every batch."""

    projection: str
    events_done: int
    """Events read so far (applied, skipped or parked)."""
    offsets_done: int
    offsets_total: int
    """Offsets between the start positions and the head (an estimate of the work: offsets
    have gaps)."""
    elapsed: float
    finished: bool = False

    @property
    def rate(self) -> float:
        """Events per second."""
        return self.events_done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def fraction(self) -> float:
        return min(1.0, self.offsets_done / self.offsets_total) if self.offsets_total else 1.0

    @property
    def eta(self) -> float | None:
        """Seconds left, estimated from the pace so far."""
        if self.finished:
            return 0.0
        if not self.offsets_done or self.elapsed <= 0:
            return None
        return self.elapsed * (self.offsets_total - self.offsets_done) / self.offsets_done


ProgressCallback = Callable[[RebuildProgress], None]


@dataclass
class RebuildResult:
    """What a rebuild did."""

    events: int
    seconds: float
    positions: dict[int, int]
    """The positions the live worker continues from."""
    rounds: int
    stats: ApplierStats = field(default_factory=ApplierStats)
    swapped: bool = True

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def rebuild(
    projection: Projection,
    store: EventStore,
    engine: Engine,
    *,
    from_positions: Mapping[int, int] | None = None,
    settings: ProjectionSettings | None = None,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
    swap: bool = True,
    max_rounds: int = 5,
) -> RebuildResult:
    """Rebuild ``projection``'s read model into shadow tables, then swap them in atomically.

    ``progress`` defaults to :func:`console_progress`. ``swap=False`` leaves the filled shadow
    tables in place (to inspect them). Raises :class:`ProjectionError` if another rebuild of
    the same projection moves the shadow positions meanwhile.
    """
    settings = settings or projection_settings(projection.name)
    stop = stop or threading.Event()
    report = progress or console_progress(projection.name)
    started = time.monotonic()
    with engine.connect() as conn:
        postgres = conn.dialect.name == "postgresql"
    shadow = projection.shadow(rename_constraints=postgres)
    _prepare(engine, shadow, from_positions or {})
    applier = Applier(shadow, engine, settings, stop)
    partitions = list(range(store.partitions))
    applier.load(partitions)
    target = store.head()
    total = sum(max(0, target.get(p, 0) - applier.next_offset(p)) for p in partitions)
    done_events = 0
    done_offsets = 0
    rounds = 0
    while rounds < max_rounds:
        rounds += 1
        this_round = 0
        for partition in partitions:
            end = target.get(partition, 0)
            while applier.next_offset(partition) < end:
                if stop.is_set():
                    raise ProjectionStoppedError(f"{projection.name}: rebuild stopped")
                start = applier.next_offset(partition)
                batch = store.read_partition(partition, start=start, limit=settings.batch_size)
                batch = [e for e in batch if e.offset < end]
                if not batch:
                    break
                if not applier.apply_partition(partition, batch):
                    raise ProjectionError(
                        f"{projection.name}: the rebuild's positions moved under it; is another "
                        "rebuild of the same projection running?"
                    )
                this_round += len(batch)
                done_events += len(batch)
                done_offsets += applier.next_offset(partition) - start
                report(
                    RebuildProgress(
                        projection.name,
                        done_events,
                        done_offsets,
                        total,
                        time.monotonic() - started,
                    )
                )
        # Catch up with what was written meanwhile; the live worker applies what comes later.
        new_target = store.head()
        if this_round < settings.batch_size or new_target == target:
            break
        total += sum(max(0, new_target.get(p, 0) - target.get(p, 0)) for p in partitions)
        target = new_target
    positions = {p: applier.next_offset(p) for p in partitions}
    if swap:
        swap_tables(projection, shadow, engine)
    elapsed = time.monotonic() - started
    report(RebuildProgress(projection.name, done_events, total, total, elapsed, finished=True))
    log.info(
        "%s: rebuilt from %d events in %.1fs (%.0f events/s), %d dead letters%s",
        projection.name,
        done_events,
        elapsed,
        done_events / elapsed if elapsed else 0.0,
        applier.stats.dead_lettered + applier.stats.held,
        ", swapped in" if swap else "",
    )
    return RebuildResult(done_events, elapsed, positions, rounds, applier.stats, swap)


def _prepare(engine: Engine, shadow: Projection, from_positions: Mapping[int, int]) -> None:
    """Fresh shadow tables, and no shadow positions or dead letters left from an earlier try."""
    with engine.begin() as conn:
        shadow.drop_tables(conn)
        shadow.create_tables(conn)
        _forget(conn, shadow.key)
        if from_positions:
            conn.execute(
                positions_table.insert(),
                [
                    {
                        "projection": shadow.key,
                        "partition": p,
                        "next_offset": o,
                        "updated_at": now(),
                    }
                    for p, o in from_positions.items()
                ],
            )


def _forget(conn: Connection, key: str) -> None:
    conn.execute(positions_table.delete().where(positions_table.c.projection == key))
    conn.execute(dead_letters_table.delete().where(dead_letters_table.c.projection == key))


def swap_tables(projection: Projection, shadow: Projection, engine: Engine) -> None:
    """In one transaction: drop the live tables, rename the shadow ones in their place, and
    replace the live positions and dead letters with the shadow's."""
    with engine.begin() as conn:
        # Positions first: a live worker mid-batch holds these rows, so the swap waits for its
        # commit, and its next guarded update fails and re-reads the rebuilt positions.
        _forget(conn, projection.name)
        for table in (positions_table, dead_letters_table):
            conn.execute(
                table.update()
                .where(table.c.projection == shadow.key)
                .values(projection=projection.name)
            )
        for live, twin in zip(projection.tables, shadow.tables, strict=True):
            _swap_table(conn, live, twin)
        write_version(conn, projection.name, projection.version)


def _swap_table(conn: Connection, live: sa.Table, twin: sa.Table) -> None:
    quote = conn.dialect.identifier_preparer.quote
    live.drop(conn, checkfirst=True)
    if conn.dialect.name == "sqlite":
        # SQLite keeps index names on rename, and cannot rename an index: recreate them.
        for index in twin.indexes:
            index.drop(conn)
    conn.execute(sa.text(f"ALTER TABLE {quote(twin.name)} RENAME TO {quote(live.name)}"))
    if conn.dialect.name == "sqlite":
        for index in live.indexes:
            index.create(conn)
    elif conn.dialect.name == "postgresql":
        _rename_postgres_objects(conn, live.name, twin.name)


def _live_name(name: str, live: str, twin: str) -> str:
    return name.replace(twin, live).replace(SHADOW_SUFFIX, "")


def _rename_postgres_objects(conn: Connection, live: str, twin: str) -> None:
    quote = conn.dialect.identifier_preparer.quote
    table = quote(live)
    oid = {"t": table}
    for (name,) in conn.execute(
        sa.text("SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(:t)"), oid
    ).all():
        if SHADOW_SUFFIX in name:
            new = _live_name(name, live, twin)
            conn.execute(
                sa.text(f"ALTER TABLE {table} RENAME CONSTRAINT {quote(name)} TO {quote(new)}")
            )
    for kind, statement in (
        ("i", "ALTER INDEX"),
        ("S", "ALTER SEQUENCE"),
    ):
        query = (
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = to_regclass(:t)"
            if kind == "i"
            else "SELECT c.relname FROM pg_class c JOIN pg_depend d ON d.objid = c.oid "
            "WHERE c.relkind = 'S' AND d.refobjid = to_regclass(:t)"
        )
        for (name,) in conn.execute(sa.text(query), oid).all():
            if SHADOW_SUFFIX in name:
                new = _live_name(name, live, twin)
                conn.execute(sa.text(f"{statement} {quote(name)} RENAME TO {quote(new)}"))


# -- progress -------------------------------------------------------------------------------------


class _LogProgress:
    """Log a line every ``interval`` seconds (for output that is not a terminal)."""

    def __init__(self, name: str, interval: float = 5.0) -> None:
        self.name = name
        self.interval = interval
        self._last = 0.0

    def __call__(self, p: RebuildProgress) -> None:
        now = time.monotonic()
        if not p.finished and now - self._last < self.interval:
            return
        self._last = now
        eta = "?" if p.eta is None else f"{p.eta:.0f}s"
        log.info(
            "rebuilding %s: %d events, %.0f%%, %.0f events/s, ETA %s",
            self.name,
            p.events_done,
            100 * p.fraction,
            p.rate,
            eta,
        )


class _RichProgress:
    """A ``rich`` progress bar on the terminal."""

    def __init__(self, name: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar: Any = Progress(
            TextColumn(f"rebuilding {name}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.0f} events/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self._task: Any = None

    def __call__(self, p: RebuildProgress) -> None:
        if self._task is None:
            self._bar.start()
            self._task = self._bar.add_task("rebuild", total=p.offsets_total, rate=0.0)
        self._bar.update(self._task, completed=p.offsets_done, total=p.offsets_total, rate=p.rate)
        if p.finished:
            self._bar.stop()


def console_progress(name: str, *, interval: float = 5.0) -> ProgressCallback:
    """A progress callback: a ``rich`` bar when stderr is a terminal, else a log line every
    ``interval`` seconds."""
    if sys.stderr.isatty():
        return _RichProgress(name)
    return _LogProgress(name, interval)
