"""A change feed: legacy row changes translated into commands (an anti-corruption layer).

The rules it keeps:

- Every command a change yields gets the id :func:`change_command_id` makes from the feed, the
  table, the row's key, the change's source position and the command's index. Reading a change
  again (a crash, a redelivery, a re-drive) re-sends the same ids, and the store runs each
  command once (a repeated id replays its first result).
- Commands go through the application's command path (validation, aggregates, optimistic
  concurrency): legacy data cannot bypass an invariant.
- The cursor (``keel_cdc_feeds``) moves only after every command of the batch has a durable
  outcome (``execute`` returned: on Kafka, the writer's transaction committed), in one SQL
  transaction with the batch's dead letters.
- A change that cannot be translated, or whose command the domain refuses, is parked in the
  dead letters (``keel_dead_letters``, projection ``cdc:<feed>``, reason ``failed``); later
  changes of the same row park behind it (``held``) so a row's changes never apply out of
  order, while other rows go on. :meth:`ChangeFeed.redrive` runs them again after a fix.
- Anything else (the store or a database unreachable, the feed's own included, an unknown
  outcome, a bug) stops the batch without moving the cursor; the run loop backs off and reads
  the same changes again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import groupby
from typing import Any
from uuid import uuid5

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.engine import Connection, Engine

from framework import dead_letters as parking
from framework.application import Application
from framework.cdc._changes import (
    _IDS,
    ChangeSource,
    Lag,
    RowChange,
    _canonical,
    change_command_id,
)
from framework.commands import Command
from framework.database import Backoff, engine_for, is_connectivity_error, reaching
from framework.dead_letters import DeadLetter
from framework.errors import (
    AggregateExistsError,
    AggregateNotFoundError,
    CommandError,
    ConcurrencyError,
    ConfigurationError,
    DomainError,
    EventEncodingError,
    EventTooLargeError,
    PositionConflictError,
    StoreError,
)
from framework.observability import Reading, instruments, observe, unobserve
from framework.observability import _names as names
from framework.positions import dead_letters_table, framework_metadata

__all__ = ["ChangeFeed", "FeedStatus", "PollResult", "RedriveResult", "feeds_table", "row_id"]

log = logging.getLogger(__name__)

feeds_table = sa.Table(
    "keel_cdc_feeds",
    framework_metadata,
    sa.Column("feed", sa.String(200), primary_key=True),
    sa.Column("cursor", sa.Text, nullable=True),
    sa.Column("changes", sa.BigInteger, nullable=False),
    sa.Column("commands", sa.BigInteger, nullable=False),
    sa.Column("last_change_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("last_error_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
"""Each feed's cursor and counters, in the framework's database."""


def row_id(change: RowChange) -> str:
    """The legacy row's id in the dead letters (changes of one row are parked in order)."""
    return str(uuid5(_IDS, _canonical([change.table, dict(change.key)])))


def _transient(error: BaseException) -> bool:
    """An outage: try the same change again later."""
    return isinstance(
        error, StoreError | ConcurrencyError | TimeoutError | ConnectionError
    ) or is_connectivity_error(error)


def _refused(error: BaseException) -> bool:
    """The domain (or the command's validation) said no to this change: park it. Any other
    error from the command path is treated as an outage and retried, so a fault of the
    infrastructure never parks good changes."""
    return isinstance(
        error,
        DomainError
        | CommandError
        | AggregateNotFoundError
        | AggregateExistsError
        | EventTooLargeError
        | EventEncodingError
        | ValidationError,
    )


@dataclass
class PollResult:
    """What one batch did."""

    changes: int = 0
    commands: int = 0
    parked: int = 0
    """Changes parked in the dead letters (refused, or held behind a refused one)."""
    held: int = 0
    """Of those, the ones held behind an earlier refused change of their row."""


@dataclass(frozen=True)
class FeedStatus:
    """A feed as an operator sees it (``python -m framework.cdc status``, the admin)."""

    feed: str
    source: str
    cursor: str | None
    changes: int
    """Changes done (translated, parked or held) since the feed started."""
    commands: int
    lag_changes: int | None
    """``None`` (as ``lag_seconds``) while the source cannot be reached: not zero."""
    lag_seconds: float | None
    dead_letters: int
    last_change_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    updated_at: datetime | None
    source_error: str | None = None
    """Why the source could not be asked for the lag just now (it is unreachable)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in self.__dict__.items()
        }


@dataclass
class RedriveResult:
    """What a re-drive did."""

    done: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    """Row id -> the error that still stops it (its dead letters stay)."""
    remaining: int = 0


class ChangeFeed:
    """Subclass it once per legacy table: set ``name`` and write :meth:`translate`.

    ``source`` is a :class:`~framework.cdc.ChangeSource` (the trigger changelog, a Debezium
    topic); ``app`` the application the commands go to; ``engine`` the framework's database
    (cursor and dead letters; default: ``DATABASE_URL``); ``name`` overrides the class's
    (one translation, several legacy tables)."""

    name: str = ""
    """The feed's name: its cursor, its dead letters and every command id carry it. Never
    change it for a running feed (its commands would get new ids)."""

    lag_every: float = 1.0
    """Seconds between two lag samples of a running feed (the ``keel.cdc.source_lag``
    gauges report the latest)."""

    def __init__(
        self,
        source: ChangeSource,
        app: Application,
        engine: Engine | None = None,
        *,
        batch_size: int = 200,
        name: str | None = None,
    ) -> None:
        if name is not None:
            self.name = name
        if not self.name:
            raise ConfigurationError(f"{type(self).__name__} needs a name = '...'")
        if batch_size < 1:
            raise ConfigurationError("batch_size must be at least 1")
        self.source = source
        self.app = app
        self.engine = engine if engine is not None else engine_for(None)
        self.batch_size = batch_size
        self.on_batch: Callable[[PollResult], None] | None = None
        """Test and progress hook, called after each committed batch."""
        self._lag: Lag | None = None  # the latest sample of a running feed (None: no reading)
        self._lag_taken = -1e9

    @property
    def key(self) -> str:
        """The feed's name in the dead letters."""
        return f"cdc:{self.name}"

    def _database(self) -> AbstractContextManager[None]:
        """Around each use of the feed's own database (cursor, dead letters): unreachable, it
        is a StoreUnavailableError naming it, which ``run`` retries and the CLI reports."""
        return reaching(self.engine, f"feed {self.name}")

    def translate(self, change: RowChange) -> Sequence[Command]:
        """The commands that carry ``change`` into the domain (none to ignore it). Raise to
        refuse it: the change is parked in the dead letters with the error."""
        raise NotImplementedError

    # -- running -----------------------------------------------------------------------------

    def poll(self) -> PollResult:
        """Read one batch past the cursor, execute its commands, then move the cursor."""
        cursor = self._cursor()
        changes = self.source.read(cursor, self.batch_size)
        result = PollResult()
        if not changes:
            return result
        blocked = self._parked_rows()
        parked: list[dict[str, Any]] = []
        for change in changes:
            rid = row_id(change)
            if rid in blocked:
                parked.append(self._letter(change, rid, "held", None))
                result.parked += 1
                result.held += 1
            else:
                try:
                    commands = list(self.translate(change))
                    error = None
                except Exception as refused:
                    if _transient(refused):
                        raise
                    error = refused
                if error is None:
                    try:
                        result.commands += self._execute(change, commands)
                    except Exception as refused:
                        if not _refused(refused):
                            raise
                        error = refused
                if error is not None:
                    log.warning("cdc %s: parked %s: %s", self.name, change.position, error)
                    parked.append(self._letter(change, rid, "failed", error))
                    blocked.add(rid)
                    result.parked += 1
            result.changes += 1
        with self._database(), self.engine.begin() as conn:
            if parked:
                conn.execute(dead_letters_table.insert(), parked)
            self._advance(conn, cursor, changes[-1], result)
        self._count(result)
        if self.on_batch is not None:
            self.on_batch(result)
        return result

    def run(
        self,
        stop: threading.Event | None = None,
        *,
        until_caught_up: bool = False,
        idle: float = 0.5,
    ) -> int:
        """Poll until ``stop`` is set (or, with ``until_caught_up``, until no change is past
        the cursor). A failed batch (an outage, or any error that is not a refusal of the
        change) backs off (0.2 s doubling to 10 s), is recorded as the feed's last error and
        is read again. While it runs, the feed reports its lag (``keel.cdc.source_lag`` and
        ``.seconds``, sampled every :attr:`lag_every` seconds). Returns the changes done."""
        stop = stop or threading.Event()
        backoff = Backoff(0.2, 10.0)
        done = 0
        reporting = self._report_lag()
        try:
            while not stop.is_set():
                try:
                    result = self.poll()
                except Exception as error:  # outages, and anything not the change's fault
                    log.warning("cdc %s: %s; retrying", self.name, error)
                    self._record_error(error)
                    self._sample_lag()
                    if not backoff.sleep(stop):
                        break
                    continue
                backoff.reset()
                done += result.changes
                if result.changes == 0:
                    # Caught up means nothing past the cursor, not "nothing readable": an open
                    # transaction holds the fence back (anywhere on the server: it is xmin).
                    if until_caught_up and self._measure_lag().changes == 0:
                        break
                    stop.wait(idle)
                self._sample_lag()
        finally:
            for metric, observer in reporting:
                unobserve(metric, observer)
        return done

    # -- metrics -----------------------------------------------------------------------------

    def _count(self, result: PollResult) -> None:
        """Count a committed batch (after the commit: a batch read again is counted once)."""
        feed = {names.FEED: self.name}
        if result.commands:
            instruments.cdc_commands.add(result.commands, feed)
        if result.parked - result.held:
            instruments.cdc_dead_letters.add(
                result.parked - result.held, {**feed, names.OUTCOME: names.DEAD_LETTERED}
            )
        if result.held:
            instruments.cdc_dead_letters.add(result.held, {**feed, names.OUTCOME: names.HELD})

    def _measure_lag(self) -> Lag:
        """The lag now (also the gauges' next reading)."""
        self._lag, self._lag_taken = self.source.lag(self._cursor()), time.monotonic()
        return self._lag

    def _sample_lag(self) -> None:
        """Refresh the gauges' lag, at most every :attr:`lag_every` seconds. A failed sample
        leaves no reading: an unknown lag is not zero."""
        if time.monotonic() - self._lag_taken < self.lag_every:
            return
        try:
            self._measure_lag()
        except Exception as error:
            log.debug("cdc %s: no lag sample: %s", self.name, error)
            self._lag, self._lag_taken = None, time.monotonic()

    def _report_lag(self) -> list[tuple[str, Any]]:
        def changes() -> list[Reading]:
            lag = self._lag
            return [] if lag is None else [(lag.changes, {names.FEED: self.name})]

        def seconds() -> list[Reading]:
            lag = self._lag
            return [] if lag is None else [(lag.seconds, {names.FEED: self.name})]

        return [
            (names.CDC_SOURCE_LAG, observe(names.CDC_SOURCE_LAG, changes)),
            (names.CDC_SOURCE_LAG_SECONDS, observe(names.CDC_SOURCE_LAG_SECONDS, seconds)),
        ]

    def _apply(self, change: RowChange) -> int:
        return self._execute(change, list(self.translate(change)))

    def _execute(self, change: RowChange, commands: list[Command]) -> int:
        for n, command in enumerate(commands):
            identified = command.model_copy(
                update={
                    "command_id": change_command_id(
                        self.name, change.table, change.key, change.position, n
                    )
                }
            )
            self.app.execute(identified, user=f"cdc:{self.name}")
        return len(commands)

    # -- cursor ------------------------------------------------------------------------------

    def _cursor(self) -> str | None:
        t = feeds_table
        with self._database(), self.engine.connect() as conn, conn.begin():
            row = conn.execute(sa.select(t.c.cursor).where(t.c.feed == self.name)).first()
        return None if row is None else row[0]

    def _advance(
        self, conn: Connection, expected: str | None, last: RowChange, result: PollResult
    ) -> None:
        t = feeds_table
        now = datetime.now(UTC)
        moved = conn.execute(
            t.update()
            .where(t.c.feed == self.name, t.c.cursor.is_not_distinct_from(expected))
            .values(
                cursor=last.cursor,
                changes=t.c.changes + result.changes,
                commands=t.c.commands + result.commands,
                last_change_at=last.committed_at,
                updated_at=now,
            )
        )
        if moved.rowcount == 1:
            return
        exists = conn.execute(sa.select(t.c.feed).where(t.c.feed == self.name)).first()
        if expected is not None or exists is not None:
            raise PositionConflictError(
                f"the cursor of feed {self.name} moved meanwhile: is another process running "
                "it? (its commands were harmless repeats; this batch is read again)"
            )
        conn.execute(
            t.insert().values(
                feed=self.name,
                cursor=last.cursor,
                changes=result.changes,
                commands=result.commands,
                last_change_at=last.committed_at,
                updated_at=now,
            )
        )

    def _record_error(self, error: BaseException) -> None:
        t = feeds_table
        message = f"{type(error).__name__}: {error}"[:4000]
        now = datetime.now(UTC)
        try:
            with self._database(), self.engine.begin() as conn:
                done = conn.execute(
                    t.update()
                    .where(t.c.feed == self.name)
                    .values(last_error=message, last_error_at=now)
                )
                if done.rowcount == 0:
                    conn.execute(
                        t.insert().values(
                            feed=self.name,
                            cursor=None,
                            changes=0,
                            commands=0,
                            last_error=message,
                            last_error_at=now,
                            updated_at=now,
                        )
                    )
        except Exception as second:  # the database itself may be what is down
            log.warning("cdc %s: could not record the error: %s", self.name, second)

    # -- dead letters ------------------------------------------------------------------------

    def _parked_rows(self) -> set[str]:
        t = dead_letters_table
        with self._database(), self.engine.connect() as conn, conn.begin():
            return set(
                conn.execute(
                    sa.select(t.c.aggregate_id).where(t.c.projection == self.key).distinct()
                ).scalars()
            )

    def _letter(
        self, change: RowChange, rid: str, reason: str, error: BaseException | None
    ) -> dict[str, Any]:
        return {
            "projection": self.key,
            "partition": change.partition,
            "offset": change.offset,
            "aggregate_id": rid,
            "version": 0,
            "event_type": f"{change.table}:{change.op}"[:300],
            "payload": json.dumps(change.to_json(), default=str).encode(),
            "reason": reason,
            "error_type": ""
            if error is None
            else f"{type(error).__module__}.{type(error).__qualname__}"[:200],
            "error_message": "" if error is None else str(error)[:4000],
            "attempts": 0 if error is None else 1,
            "created_at": datetime.now(UTC),
        }

    def dead_letters(self, limit: int | None = None) -> list[DeadLetter]:
        """The parked changes (``payload`` is the change as JSON), oldest first."""
        return parking.list_dead_letters(self.engine, self.key, limit=limit)

    def change_of(self, letter: DeadLetter) -> RowChange:
        """The change a dead letter holds."""
        return RowChange.from_json(json.loads(letter.payload))

    def discard(self, ids: Iterable[int]) -> int:
        """Drop dead letters without running them (their changes never reach the domain)."""
        return parking.discard(self.engine, self.key, list(ids))

    def redrive(self, rows: Iterable[str] | None = None) -> RedriveResult:
        """Translate and execute the parked changes again (after a fix of the translation or
        of the domain's data), each row's in order; a row whose change still fails keeps its
        dead letters, with the new error. The same command ids are used, so a change that got
        half through before runs its remaining commands only."""
        result = RedriveResult()
        letters = self.dead_letters()
        if rows is not None:
            wanted = set(rows)
            letters = [d for d in letters if d.aggregate_id in wanted]
        letters.sort(key=lambda d: (d.aggregate_id, d.partition, d.offset))
        t = dead_letters_table
        for rid, group in groupby(letters, key=lambda d: d.aggregate_id):
            parked = list(group)
            for letter in parked:
                try:
                    issued = self._apply(self.change_of(letter))
                except Exception as error:
                    message = f"{type(error).__name__}: {error}"
                    result.failed[rid] = message
                    with self._database(), self.engine.begin() as conn:
                        conn.execute(
                            t.update()
                            .where(t.c.id == letter.id)
                            .values(
                                reason="failed",
                                error_type=f"{type(error).__module__}.{type(error).__qualname__}"[
                                    :200
                                ],
                                error_message=str(error)[:4000],
                                attempts=t.c.attempts + 1,
                            )
                        )
                    break
                with self._database(), self.engine.begin() as conn:
                    conn.execute(t.delete().where(t.c.id == letter.id))
                if issued:
                    instruments.cdc_commands.add(issued, {names.FEED: self.name})
                result.done += 1
        result.remaining = parking.count(self.engine, self.key)
        return result

    # -- status ------------------------------------------------------------------------------

    def status(self) -> FeedStatus:
        """Cursor, counters, lag (changes and seconds), dead letters and the last error; a
        source that cannot be reached gives no lag and its error as ``source_error``."""
        t = feeds_table
        with self._database(), self.engine.connect() as conn, conn.begin():
            row = conn.execute(sa.select(t).where(t.c.feed == self.name)).first()
        cursor = None if row is None else row.cursor
        lag: Lag | None = None
        source_error = None
        try:
            lag = self.source.lag(cursor)
        except Exception as error:  # an outage of the source is what status must report
            if not _transient(error):
                raise
            source_error = f"{type(error).__name__}: {error}"
        return FeedStatus(
            feed=self.name,
            source=self.source.name,
            cursor=cursor,
            changes=0 if row is None else int(row.changes),
            commands=0 if row is None else int(row.commands),
            lag_changes=None if lag is None else lag.changes,
            lag_seconds=None if lag is None else lag.seconds,
            dead_letters=parking.count(self.engine, self.key),
            last_change_at=None if row is None else row.last_change_at,
            last_error=None if row is None else row.last_error,
            last_error_at=None if row is None else row.last_error_at,
            updated_at=None if row is None else row.updated_at,
            source_error=source_error,
        )

    def reset(self) -> None:
        """Forget the cursor, counters and dead letters (the next run starts from the source's
        beginning; commands already run replay harmlessly)."""
        with self._database(), self.engine.begin() as conn:
            conn.execute(feeds_table.delete().where(feeds_table.c.feed == self.name))
            conn.execute(
                dead_letters_table.delete().where(dead_letters_table.c.projection == self.key)
            )
