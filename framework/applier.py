"""Applying events to a read model exactly once: the transaction every worker and rebuild uses.

One partition's events go in as one SQL transaction that first moves the stored position from
the value this applier expects (the guard: another writer of the same rows makes it roll back),
then runs the handlers, and commits both together. So an event is applied exactly when its
position is committed, a redelivered event (offset below the position) is skipped, and a crash
at any point leaves either all of a batch or none of it.

Failures are told apart:

- **The database went away** (connection refused, killed, locked): the same batch is retried
  with capped, increasing backoff until the database is back (or the worker is stopped).
- **A handler failed or the event does not decode** (a *poison* event): the events before it
  commit, it is retried alone with capped backoff, then parked in the dead-letter table with
  the error, and the worker goes on.

**Dead-letter policy: sequenced, per aggregate** (as Axon's dead-letter queue): once an event of
an aggregate is parked, that projection parks every later event of the same aggregate too
(reason ``held``) without running the handler, so the aggregate's rows never see its events out
of order. Other aggregates keep flowing. After a fix, :func:`framework.dead_letters.redrive`
applies each aggregate's parked events in order, removing them in the same transaction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from framework.codec import codec
from framework.database import Backoff, is_connectivity_error, read_only
from framework.dead_letters import parked_fields
from framework.errors import PositionConflictError, ProjectionError, ProjectionStoppedError
from framework.observability._batches import event_log_context, observed_batch
from framework.persistence import RecordedEvent
from framework.positions import dead_letters_table, now, read_positions, write_positions
from framework.projection import Projection
from framework.settings import ProjectionSettings

__all__ = ["Applier", "ApplierStats"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class ApplierStats:
    """Counters a worker or a rebuild reports (and the fault tests assert on)."""

    events_applied: int = 0
    events_skipped: int = 0
    """Events of types the projection does not handle (and command records)."""
    duplicates_skipped: int = 0
    """Redelivered events, below the stored position: not applied again."""
    transactions: int = 0
    conflicts: int = 0
    handler_retries: int = 0
    dead_lettered: int = 0
    held: int = 0
    outage_retries: int = 0
    outage_delays: list[float] = field(default_factory=list)
    outage_episodes: list[list[float]] = field(default_factory=list)
    """The backoff delays of each outage (one list per outage)."""
    outage_seconds: float = 0.0
    """Time spent waiting for the database to come back."""


@dataclass
class _Failure:
    index: int
    error: BaseException
    batch: bool = False
    """A batch handler failed on a run of several events starting at ``index``."""


class _HandlerFailed(Exception):
    def __init__(self, index: int, error: BaseException, batch: bool = False) -> None:
        self.index = index
        self.error = error
        self.batch = batch


class Applier:
    """Applies one projection's events, partition by partition, with its positions.

    ``positions`` is what this applier expects the stored positions to be (``None``: no row
    yet); a partition missing from it is unknown and must be :meth:`load`-ed first.
    """

    def __init__(
        self,
        projection: Projection,
        engine: Engine,
        settings: ProjectionSettings,
        stop: threading.Event | None = None,
        *,
        on_conflict: Callable[[int, int | None], None] | None = None,
        destination: tuple[str, str] = ("keel", "events"),
        group: str | None = None,
    ) -> None:
        self.projection = projection
        self.messaging_system, self.topic = destination
        """Where the events come from (names the batches' ``process <topic>`` spans)."""
        self.group = group
        self.engine = engine
        self.settings = settings
        self.stop = stop or threading.Event()
        self.positions: dict[int, int | None] = {}
        self.stats = ApplierStats()
        self.on_conflict = on_conflict
        self._topics = projection.handled_topics()

    # -- positions ------------------------------------------------------------------------------

    def load(self, partitions: Sequence[int] | set[int]) -> dict[int, int]:
        """Read the stored positions of ``partitions`` (waiting out outages) and expect them."""
        stored = self._with_db(
            lambda conn: read_positions(conn, self.projection.key, partitions), read=True
        )
        for partition in partitions:
            self.positions[partition] = stored.get(partition)
        return {p: stored.get(p) or 0 for p in partitions}

    def forget(self, partitions: set[int]) -> None:
        for partition in partitions:
            self.positions.pop(partition, None)

    def next_offset(self, partition: int) -> int:
        return self.positions.get(partition) or 0

    # -- applying -------------------------------------------------------------------------------

    def apply_partition(self, partition: int, events: Sequence[RecordedEvent]) -> bool:
        """Apply one partition's events (in offset order; duplicates allowed). Returns ``False``
        when the stored position had moved (the caller should re-seek from ``positions``)."""
        if not events:
            return self._apply_partition(partition, events)
        with observed_batch(self, partition, events):
            return self._apply_partition(partition, events)

    def _apply_partition(self, partition: int, events: Sequence[RecordedEvent]) -> bool:
        if partition not in self.positions:
            raise ProjectionError(f"partition {partition}'s position was never loaded")
        fresh: list[RecordedEvent] = []
        running = self.next_offset(partition)
        for event in events:
            if event.offset >= running:
                fresh.append(event)
                running = event.offset + 1
            else:
                self.stats.duplicates_skipped += 1
        start = 0
        single = False  # after a batch handler failed: one event per handler call, to find it
        try:
            while start < len(fresh):
                end = len(fresh)
                while True:
                    failure = self._transact(partition, fresh[start:end], single=single)
                    if failure is None:
                        start = end
                        break
                    if failure.index > 0:
                        end = start + failure.index  # commit the events before the failing one
                    elif failure.batch and not single:
                        single = True
                    else:
                        self._retry_or_park(partition, fresh[start], failure.error)
                        start += 1
                        single = False
                        break
        except PositionConflictError as error:
            self.stats.conflicts += 1
            log.warning("%s: %s", self.projection.key, error)
            self.load([partition])
            if self.on_conflict is not None:
                self.on_conflict(partition, self.positions.get(partition))
            return False
        return True

    def _retry_or_park(self, partition: int, event: RecordedEvent, error: BaseException) -> None:
        with event_log_context(event):
            self._retry_or_park_logged(partition, event, error)

    def _retry_or_park_logged(
        self, partition: int, event: RecordedEvent, error: BaseException
    ) -> None:
        backoff = Backoff(self.settings.retry_initial, self.settings.retry_max)
        attempts = 1
        # An error that says retrying cannot help (``retryable = False``) is parked at once.
        while attempts < self.settings.max_attempts and getattr(error, "retryable", True):
            log.warning(
                "%s: %s v%s of %s failed (attempt %d of %d): %s: %s",
                self.projection.key,
                event.topic,
                event.version,
                event.aggregate_id,
                attempts,
                self.settings.max_attempts,
                type(error).__name__,
                error,
            )
            self.stats.handler_retries += 1
            if not backoff.sleep(self.stop):
                raise ProjectionStoppedError("stopped while retrying a failing event")
            failure = self._transact(partition, [event])
            if failure is None:
                return
            attempts += 1
            error = failure.error
        log.error(
            "%s: parking %s v%s of %s (partition %s offset %s) as a dead letter after %d "
            "attempts: %s: %s",
            self.projection.key,
            event.topic,
            event.version,
            event.aggregate_id,
            event.partition,
            event.offset,
            attempts,
            type(error).__name__,
            error,
        )
        self._transact(partition, [event], park=(error, attempts))

    def _transact(
        self,
        partition: int,
        events: Sequence[RecordedEvent],
        park: tuple[BaseException, int] | None = None,
        *,
        single: bool = False,
    ) -> _Failure | None:
        """One transaction: guard and move the position, then apply (or park) ``events``."""
        new = events[-1].offset + 1
        held_here = [0]

        def work(conn: Connection) -> None:
            held_here[0] = self._apply(conn, partition, events, new, park, single=single)

        try:
            self._with_db(work)
        except _HandlerFailed as failed:
            return _Failure(failed.index, failed.error, failed.batch)
        self.positions[partition] = new
        self.stats.transactions += 1
        if park is None:
            handled = sum(1 for e in events if e.topic in self._topics)
            self.stats.events_applied += handled - held_here[0]
            self.stats.held += held_here[0]
            self.stats.events_skipped += len(events) - handled
        return None

    def _apply(
        self,
        conn: Connection,
        partition: int,
        events: Sequence[RecordedEvent],
        new: int,
        park: tuple[BaseException, int] | None = None,
        *,
        single: bool = False,
    ) -> int:
        """Inside ``conn``'s transaction: guard and move the position to ``new``, then apply
        (or park) ``events``. Returns how many were held behind a dead letter.

        Consecutive events of one batch handler go to it as one list (events the projection
        does not handle, or parks, do not break the run: they touch none of its rows)."""
        write_positions(
            conn, self.projection.key, {partition: new}, {partition: self.positions[partition]}
        )
        if park is not None:
            self._park(conn, events[0], "failed", park[0], park[1])
            return 0
        topics = self._topics
        handled = [e for e in events if e.topic in topics]
        if not handled:
            return 0
        held = self._held(conn, handled)
        batch_topics = self.projection.batch_topics()
        projection = self.projection
        held_count = 0
        run: list[tuple[int, RecordedEvent]] = []
        run_handler: object = None
        for index, event in enumerate(events):
            topic = event.topic
            if topic not in topics:
                continue
            if held and event.aggregate_id in held:
                self._park(conn, event, "held", None, 0)
                held_count += 1
                continue
            if topic in batch_topics:
                handler = topics[topic]
                if run and (single or handler != run_handler):
                    self._run(conn, run)
                    run = []
                run.append((index, event))
                run_handler = handler
                continue
            if run:
                self._run(conn, run)
                run = []
            try:
                projection.apply(codec.decode(event), conn)
            except Exception as error:
                if is_connectivity_error(error):
                    raise
                raise _HandlerFailed(index, error) from error
        if run:
            self._run(conn, run)
        return held_count

    def _run(self, conn: Connection, run: list[tuple[int, RecordedEvent]]) -> None:
        """Decode a run of one batch handler's events and hand it over."""
        envelopes = []
        for index, event in run:
            try:
                envelopes.append(codec.decode(event))
            except Exception as error:
                raise _HandlerFailed(index, error) from error
        try:
            self.projection.apply_batch(envelopes, conn)
        except Exception as error:
            if is_connectivity_error(error):
                raise
            raise _HandlerFailed(run[0][0], error, batch=len(run) > 1) from error

    def apply_within(
        self, conn: Connection, partition: int, events: Sequence[RecordedEvent], new: int
    ) -> None:
        """Apply ``events`` (offsets from this applier's position on) and move the position to
        ``new`` inside the caller's transaction, with no retry and no parking: a failing
        handler raises :class:`ProjectionError`, and the caller rolls back. Call
        :meth:`committed` once the caller has committed. (The rebuild's swap uses this.)"""
        try:
            self._apply(conn, partition, events, new)
        except _HandlerFailed as failed:
            raise ProjectionError(
                f"{self.projection.key}: {events[failed.index].topic} at offset "
                f"{events[failed.index].offset} failed: {failed.error}"
            ) from failed.error

    def committed(self, positions: dict[int, int]) -> None:
        """The caller's transaction that :meth:`apply_within` ran in has committed."""
        self.positions.update(positions)

    def _held(self, conn: Connection, events: Sequence[RecordedEvent]) -> set[object]:
        """The aggregates among ``events`` with parked events (whose later events wait)."""
        if not events:
            return set()
        t = dead_letters_table
        # Usually there is none: one indexed probe instead of a long IN list per batch.
        probe = sa.select(sa.literal(1)).where(t.c.projection == self.projection.key).limit(1)
        if conn.execute(probe).first() is None:
            return set()
        ids = sorted({str(e.aggregate_id) for e in events})
        rows = conn.execute(
            sa.select(t.c.aggregate_id)
            .where(t.c.projection == self.projection.key, t.c.aggregate_id.in_(ids))
            .distinct()
        )
        held = {row[0] for row in rows}
        if not held:
            return set()
        return {e.aggregate_id for e in events if str(e.aggregate_id) in held}

    def _park(
        self,
        conn: Connection,
        event: RecordedEvent,
        reason: str,
        error: BaseException | None,
        attempts: int,
    ) -> None:
        if error is None:
            error_type = "Held"
            message = "an earlier event of this aggregate is a dead letter; applied on re-drive"
        else:
            error_type = f"{type(error).__module__}.{type(error).__qualname__}"
            message = str(error)[:4000]
            self.stats.dead_lettered += 1
        conn.execute(
            dead_letters_table.insert().values(
                projection=self.projection.key,
                **parked_fields(event),
                reason=reason,
                error_type=error_type,
                error_message=message,
                attempts=attempts,
                created_at=now(),
            )
        )
        if error is not None:
            self.projection.parked(conn, event, error)

    # -- the database ---------------------------------------------------------------------------

    def _with_db(self, work: Callable[[Connection], T], *, read: bool = False) -> T:
        """Run ``work`` in one transaction, retrying the whole of it while the database is
        unreachable (capped, increasing backoff; each attempt logged)."""
        backoff = Backoff(self.settings.outage_initial, self.settings.outage_max)
        down_since: float | None = None
        while True:
            try:
                with self.engine.connect() as conn:
                    if read:
                        read_only(conn)
                    with conn.begin():
                        result = work(conn)
                if down_since is not None:
                    waited = time.monotonic() - down_since
                    self.stats.outage_seconds += waited
                    log.warning(
                        "%s: the database is back after %.1fs and %d retries",
                        self.projection.key,
                        waited,
                        backoff.attempts,
                    )
                return result
            except Exception as error:
                if not is_connectivity_error(error):
                    raise
                if down_since is None:
                    down_since = time.monotonic()
                    self.stats.outage_episodes.append([])
                delay = backoff.next()
                self.stats.outage_retries += 1
                self.stats.outage_delays.append(delay)
                self.stats.outage_episodes[-1].append(delay)
                log.warning(
                    "%s: the read-model database is unavailable (%s); retry %d in %.2fs",
                    self.projection.key,
                    str(error).splitlines()[0][:200],
                    backoff.attempts,
                    delay,
                )
                if self.stop.wait(delay):
                    raise ProjectionStoppedError(
                        "stopped while the database was unavailable"
                    ) from error
