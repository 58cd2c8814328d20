"""Rebuilding a read model without downtime, and bootstrapping a new one.

A rebuild runs the projection's handlers from position 0 (or ``from_positions``) into *shadow*
tables (``<table>__rebuild``: same columns and indexes) while queries keep reading the live
tables, and the live worker keeps them current. It reads the store directly, partition by
partition, with the same exactly-once machinery as the worker (its positions and dead letters
are kept under ``<projection>__rebuild``). Once it reaches the head it swaps, in ONE
transaction that first locks the live positions and applies to the shadow whatever the live
tables already reflect (so the tables swapped in are never behind the ones readers saw): the
live tables are dropped, the shadow tables renamed in their place, and the live positions and
dead letters replaced by the shadow's. The live worker's next batch then finds the positions
moved (its guarded update fails), re-reads them and continues from the rebuilt positions:
events written during the rebuild, even during the swap, are applied once.

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
from framework.observability._tracing import destination_of, rebuild_span
from framework.persistence import EventStore
from framework.positions import (
    POSITION_TABLES,
    dead_letters_table,
    now,
    positions_table,
    require_tables,
    write_version,
)
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
    max_rounds: int = 20,
) -> RebuildResult:
    """Rebuild ``projection``'s read model into shadow tables, then swap them in atomically.

    ``progress`` defaults to :func:`console_progress`. ``swap=False`` leaves the filled shadow
    tables in place (to inspect them). The swap happens only once the shadow is at or past
    the live positions (checked in the swap's transaction), so a reader never sees rows or
    positions go back. Raises :class:`ProjectionError` if another rebuild of the same
    projection moves the shadow positions meanwhile, or if the log keeps outrunning the
    rebuild for ``max_rounds`` rounds.
    """
    with rebuild_span(projection.name):
        return _rebuild(
            projection,
            store,
            engine,
            from_positions=from_positions,
            settings=settings,
            progress=progress,
            stop=stop,
            swap=swap,
            max_rounds=max_rounds,
        )


def _rebuild(
    projection: Projection,
    store: EventStore,
    engine: Engine,
    *,
    from_positions: Mapping[int, int] | None,
    settings: ProjectionSettings | None,
    progress: ProgressCallback | None,
    stop: threading.Event | None,
    swap: bool,
    max_rounds: int,
) -> RebuildResult:
    settings = settings or projection_settings(projection.name)
    stop = stop or threading.Event()
    report = progress or console_progress(projection.name)
    started = time.monotonic()
    with engine.connect() as conn:
        postgres = conn.dialect.name == "postgresql"
        # Before the shadow tables are made: an unmigrated database is told so, not left with them.
        require_tables(conn, projection.name, POSITION_TABLES)
    shadow = projection.shadow(rename_constraints=postgres)
    _prepare(engine, shadow, from_positions or {})
    applier = Applier(shadow, engine, settings, stop, destination=destination_of(store))
    partitions = list(range(store.partitions))
    applier.load(partitions)
    progress_state = _Progress(projection.name, report, started)
    target = store.head()
    progress_state.total = sum(
        max(0, target.get(p, 0) - applier.next_offset(p)) for p in partitions
    )
    rounds = 0
    swapped = False
    while True:
        rounds += 1
        if rounds > max_rounds:
            raise ProjectionError(
                f"{projection.name}: the rebuild did not catch up with the log in {max_rounds} "
                "rounds (events arrive faster than it applies them); raise max_rounds or "
                "batch_size, or rebuild at a quieter time"
            )
        _catch_up(applier, store, partitions, target, progress_state, stop)
        # Catch up with what was written meanwhile, until a round is short.
        new_target = store.head()
        behind = sum(max(0, new_target.get(p, 0) - target.get(p, 0)) for p in partitions)
        progress_state.total += behind
        target = new_target
        if behind >= settings.batch_size:
            continue
        if not swap:
            break
        # The shadow swaps in only at or past the live positions, checked (and the last few
        # events applied) in the swap's own transaction, so readers never go back in time.
        if swap_tables(projection, shadow, engine, applier=applier, store=store):
            swapped = True
            break
        # The live tables were further ahead, or an event failed in the swap's transaction:
        # catch up with the whole log (poison events are parked there), then try again.
        new_target = store.head()
        progress_state.total += sum(
            max(0, new_target.get(p, 0) - target.get(p, 0)) for p in partitions
        )
        target = new_target
    positions = {p: applier.next_offset(p) for p in partitions}
    elapsed = time.monotonic() - started
    done_events = progress_state.events
    report(
        RebuildProgress(
            projection.name,
            done_events,
            progress_state.total,
            progress_state.total,
            elapsed,
            finished=True,
        )
    )
    log.info(
        "%s: rebuilt from %d events in %.1fs (%.0f events/s), %d dead letters%s",
        projection.name,
        done_events,
        elapsed,
        done_events / elapsed if elapsed else 0.0,
        applier.stats.dead_lettered + applier.stats.held,
        ", swapped in" if swapped else "",
    )
    return RebuildResult(done_events, elapsed, positions, rounds, applier.stats, swapped)


@dataclass
class _Progress:
    name: str
    report: ProgressCallback
    started: float
    total: int = 0
    events: int = 0
    offsets: int = 0

    def add(self, events: int, offsets: int) -> None:
        self.events += events
        self.offsets += offsets
        self.report(
            RebuildProgress(
                self.name,
                self.events,
                min(self.offsets, self.total),
                self.total,
                time.monotonic() - self.started,
            )
        )


def _catch_up(
    applier: Applier,
    store: EventStore,
    partitions: list[int],
    target: Mapping[int, int],
    progress: _Progress,
    stop: threading.Event,
) -> None:
    """Apply every partition's events from the applier's position up to ``target``."""
    name = applier.projection.name
    batch_size = applier.settings.batch_size
    for partition in partitions:
        end = target.get(partition, 0)
        while applier.next_offset(partition) < end:
            if stop.is_set():
                raise ProjectionStoppedError(f"{name}: rebuild stopped")
            start = applier.next_offset(partition)
            batch = store.read_partition(partition, start=start, limit=batch_size)
            batch = [e for e in batch if e.offset < end]
            if not batch:
                break
            if not applier.apply_partition(partition, batch):
                raise ProjectionError(
                    f"{name}: the rebuild's positions moved under it; is another rebuild of "
                    "the same projection running?"
                )
            progress.add(len(batch), applier.next_offset(partition) - start)


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


class _Behind(Exception):
    """The live tables are further ahead than the swap transaction catches up."""


def swap_tables(
    projection: Projection,
    shadow: Projection,
    engine: Engine,
    *,
    applier: Applier | None = None,
    store: EventStore | None = None,
) -> bool:
    """In one transaction: drop the live tables, rename the shadow ones in their place, and
    replace the live positions and dead letters with the shadow's.

    With ``applier`` (the shadow's) and ``store``, the swap first locks the live positions and
    applies to the shadow whatever the live tables have that it lacks (up to one batch), so
    the tables swapped in are never behind the live ones. Returns ``False`` (nothing changed)
    when the live tables are further ahead, or a handler failed: catch up again and retry."""
    done: dict[int, int] = {}
    try:
        with engine.begin() as conn:
            # Positions first: a live worker mid-batch holds these rows, so the swap waits for
            # its commit, and its next guarded update fails and re-reads the rebuilt positions.
            live = _lock_positions(conn, projection.name)
            if applier is not None and store is not None:
                done = _reach(conn, applier, store, live)
            _forget(conn, projection.name)
            for table in (positions_table, dead_letters_table):
                conn.execute(
                    table.update()
                    .where(table.c.projection == shadow.key)
                    .values(projection=projection.name)
                )
            for live_table, twin in zip(projection.tables, shadow.tables, strict=True):
                _swap_table(conn, live_table, twin)
            write_version(conn, projection.name, projection.version)
    except (_Behind, ProjectionError) as error:
        log.info("%s: not swapping yet: %s", projection.name, error)
        return False
    except sa.exc.IntegrityError as error:  # a live worker stored its first position meanwhile
        log.info("%s: not swapping yet: %s", projection.name, str(error).splitlines()[0])
        return False
    if applier is not None:
        applier.committed(done)
    return True


def _lock_positions(conn: Connection, key: str) -> dict[int, int]:
    """The live positions, locked until the swap commits (SQLite's ``BEGIN IMMEDIATE``
    already holds the database's write lock)."""
    t = positions_table
    query = sa.select(t.c.partition, t.c.next_offset).where(t.c.projection == key)
    if conn.dialect.name != "sqlite":
        query = query.with_for_update()
    return {int(p): int(o) for p, o in conn.execute(query)}


def _reach(
    conn: Connection, applier: Applier, store: EventStore, live: Mapping[int, int]
) -> dict[int, int]:
    """Bring the shadow (inside the swap's transaction) at least to the ``live`` positions;
    returns the shadow positions it moved."""
    moved: dict[int, int] = {}
    for partition, wanted in sorted(live.items()):
        at = applier.next_offset(partition)
        if at >= wanted:
            continue
        events = [
            e
            for e in store.read_partition(
                partition, start=at, limit=applier.settings.batch_size + 1
            )
            if e.offset < wanted
        ]
        if len(events) > applier.settings.batch_size:
            raise _Behind(f"partition {partition}: the live tables are more than a batch ahead")
        # Past the last event below the live position lie only offsets without events
        # (transaction markers): the shadow may take the live position itself.
        applier.apply_within(conn, partition, events, wanted)
        moved[partition] = wanted
    return moved


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
