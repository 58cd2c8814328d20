"""An event store over the eventsourcing library's application recorders.

The memory, SQLite and PostgreSQL backends are this class with a different recorder: the
recorders already give atomic multi-event inserts, a unique ``(originator_id, version)``
constraint (our optimistic-concurrency check) and a gap-free notification sequence (our feed,
one partition whose offsets are notification ids).

Every append is checked against a size limit before anything is sent: one event may take
``max_event_bytes`` (default 1 MiB, Kafka's default record size) and one append (a command's
events together) ``max_append_bytes`` (default 2 MiB). Both are URL options
(``?max_event_bytes=...&max_append_bytes=...``). PostgreSQL caps the second at 3 MiB: larger
appends stall the recorder's psycopg pipeline (a 10 MB event never returned).
"""

from __future__ import annotations

import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    DataError,
    IntegrityError,
    OperationalError,
    PersistenceError,
    StoredEvent,
)

from framework.backends.url_options import Parser, positive_integer
from framework.errors import (
    ConcurrencyError,
    ConfigurationError,
    EventTooLargeError,
    StoreError,
    StoreUnavailableError,
)
from framework.persistence import (
    ConsumerSettings,
    EventStore,
    FeedReader,
    NewEvent,
    OnAssign,
    OnRevoke,
    Positions,
    RecordedEvent,
    Snapshot,
)

T = TypeVar("T")

MAX_EVENT_BYTES = 1024 * 1024
MAX_APPEND_BYTES = 2 * 1024 * 1024


def byte_count(value: str) -> int:
    try:
        return positive_integer(value)
    except ValueError:
        raise ValueError("must be a positive number of bytes") from None


SIZE_OPTIONS: dict[str, Parser] = {"max_event_bytes": byte_count, "max_append_bytes": byte_count}
"""The size-limit URL options every recorder store takes (see :func:`size_limits`)."""


def size_limits(options: Mapping[str, Any], *, cap: int | None = None) -> tuple[int, int]:
    """``max_event_bytes`` and ``max_append_bytes`` from a URL's parsed :data:`SIZE_OPTIONS`."""
    max_event: int = options.get("max_event_bytes", MAX_EVENT_BYTES)
    max_append: int = options.get("max_append_bytes", MAX_APPEND_BYTES)
    if cap is not None and max_append > cap:
        raise ConfigurationError(
            f"max_append_bytes={max_append} is above {cap}, the most this "
            "backend writes in one append without stalling; use a smaller value"
        )
    return min(max_event, max_append), max_append


def event_size(event: NewEvent) -> int:
    """About how many bytes ``event`` takes in a stored row (id, version, topic, state)."""
    return 16 + 8 + len(event.topic.encode("utf-8", "replace")) + len(event.state)


def check_size(events: Sequence[NewEvent], max_event: int, max_append: int) -> None:
    """Refuse an append larger than the store accepts, before anything is sent."""
    total = 0
    for e in events:
        size = event_size(e)
        if size > max_event:
            raise EventTooLargeError(
                f"event {e.topic} v{e.version} of {e.aggregate_id} takes about {size} bytes; "
                f"the store accepts {max_event}. Nothing was written"
            )
        total += size
    if total > max_append:
        raise EventTooLargeError(
            f"these {len(events)} events take about {total} bytes together; the store accepts "
            f"{max_append} in one append. Nothing was written"
        )


@contextmanager
def translated_errors() -> Iterator[None]:
    """Turn the recorders' PEP 249-style errors into the framework's tree."""
    try:
        yield
    except DataError as error:
        if "too big" not in str(error) and "too large" not in str(error):
            raise StoreError(str(error)) from error
        raise EventTooLargeError(
            f"the event takes more bytes than the database accepts ({error}). Nothing was written"
        ) from error
    except IntegrityError as error:
        raise ConcurrencyError(
            f"another writer appended to the aggregate first; nothing was written ({error})"
        ) from error
    except (OperationalError, TimeoutError, ConnectionError) as error:
        raise StoreUnavailableError(
            f"the event database is unavailable; nothing was written ({error})"
        ) from error
    except (PersistenceError, sqlite3.Error) as error:
        # The SQLite recorder lets some of sqlite3's own errors through (when it sets up a new
        # connection): they stay in the framework's tree too.
        raise StoreError(str(error)) from error


class RecorderEventStore(EventStore):
    """An :class:`EventStore` over an eventsourcing ``ApplicationRecorder``."""

    def __init__(
        self,
        name: str,
        events: ApplicationRecorder,
        snapshots: AggregateRecorder,
        close: Callable[[], None] = lambda: None,
        *,
        max_event_bytes: int = MAX_EVENT_BYTES,
        max_append_bytes: int = MAX_APPEND_BYTES,
    ) -> None:
        self.name = name
        self.max_event_bytes = max_event_bytes
        self.max_append_bytes = max_append_bytes
        self._events = events
        self._snapshots = snapshots
        self._close = close
        self._readers: weakref.WeakSet[PollingFeedReader] = weakref.WeakSet()
        self._readers_lock = threading.Lock()

    @property
    def partitions(self) -> int:
        return 1

    def append(self, events: Sequence[NewEvent]) -> Positions:
        if not events:
            return {}
        check_size(events, self.max_event_bytes, self.max_append_bytes)
        self._check_sequences(events)
        stored = [
            StoredEvent(
                originator_id=e.aggregate_id,
                originator_version=e.version,
                topic=e.topic,
                state=e.state,
            )
            for e in events
        ]
        with translated_errors():
            ids = self._events.insert_events(stored)
        self._wake_readers()
        return {0: max(ids or [0]) + 1}

    def _check_sequences(self, events: Sequence[NewEvent]) -> None:
        """Refuse a version that does not follow the aggregate's last one. The unique constraint
        catches a version taken concurrently; this catches a gap, which can only shrink."""
        last: dict[UUID, int] = {}
        for e in events:
            if e.aggregate_id not in last and e.version == 1:
                last[e.aggregate_id] = 0  # a taken version 1 is the unique constraint's to catch
            elif e.aggregate_id not in last:
                with translated_errors():
                    found = self._events.select_events(e.aggregate_id, desc=True, limit=1)
                last[e.aggregate_id] = found[0].originator_version if found else 0
            if e.version != last[e.aggregate_id] + 1:
                raise ConcurrencyError(
                    f"aggregate {e.aggregate_id} is at version {last[e.aggregate_id]}, so the "
                    f"next event must be version {last[e.aggregate_id] + 1}, not {e.version}; "
                    "nothing was written"
                )
            last[e.aggregate_id] = e.version

    def _wake_readers(self) -> None:
        # Feed readers of this process see an append at once, not after their poll timeout.
        with self._readers_lock:
            readers = list(self._readers)
        for reader in readers:
            reader.wake()

    def read(
        self, aggregate_id: UUID, *, after_version: int = 0, up_to_version: int | None = None
    ) -> list[RecordedEvent]:
        with translated_errors():
            stored = self._events.select_events(
                aggregate_id, gt=after_version or None, lte=up_to_version
            )
        # The aggregate sequence does not carry notification ids; -1 says "not a feed read".
        return [_recorded(s, offset=-1) for s in stored]

    def read_partition(self, partition: int, *, start: int, limit: int) -> list[RecordedEvent]:
        if partition != 0:
            return []
        with translated_errors():
            notifications = self._events.select_notifications(start=max(start, 1), limit=limit)
        return [_recorded(n, offset=n.id) for n in notifications]

    def head(self) -> Positions:
        with translated_errors():
            last = self._events.max_notification_id()
        return {0: (last or 0) + 1}

    def save_snapshot(self, snapshot: Snapshot) -> None:
        stored = StoredEvent(
            originator_id=snapshot.aggregate_id,
            originator_version=snapshot.version,
            topic=snapshot.topic,
            state=snapshot.state,
        )
        try:
            with translated_errors():
                self._snapshots.insert_events([stored])
        except ConcurrencyError:
            pass  # A snapshot at this version exists already: snapshots are deterministic.

    def latest_snapshot(self, aggregate_id: UUID) -> Snapshot | None:
        with translated_errors():
            found = self._snapshots.select_events(aggregate_id, desc=True, limit=1)
        if not found:
            return None
        s = found[0]
        return Snapshot(_as_uuid(s.originator_id), s.originator_version, s.topic, s.state)

    def feed(
        self,
        group: str,
        *,
        on_assign: OnAssign,
        on_revoke: OnRevoke | None = None,
        consumer: ConsumerSettings | None = None,
    ) -> FeedReader:
        reader = PollingFeedReader(self, on_assign)
        with self._readers_lock:
            self._readers.add(reader)
        return reader

    def close(self) -> None:
        self._close()


class PollingFeedReader(FeedReader):
    """Reads a one-partition store by polling; every reader owns partition 0.

    The embedded backends run one worker per projection, so there is no group to share with.
    An append through the same store object wakes a waiting poll at once; appends by other
    processes are seen at the next re-check, every ``recheck`` seconds.
    """

    recheck = 0.05

    def __init__(self, store: EventStore, on_assign: OnAssign) -> None:
        self._store = store
        self._next = dict(on_assign({0}))
        self._next.setdefault(0, 0)
        self._wakeup = threading.Event()
        self._closed = False

    def wake(self) -> None:
        """Make a waiting :meth:`poll` read again now."""
        self._wakeup.set()

    def poll(self, *, max_records: int, timeout: float) -> list[RecordedEvent]:
        events = self._store.read_partition(0, start=self._next[0], limit=max_records)
        deadline = time.monotonic() + timeout
        while not events and not self._closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.wait(min(remaining, self.recheck))
            self._wakeup.clear()
            events = self._store.read_partition(0, start=self._next[0], limit=max_records)
        if events:
            self._next[0] = events[-1].offset + 1
        return events

    def seek(self, partition: int, offset: int) -> None:
        self._next[partition] = offset

    def assignment(self) -> set[int]:
        return {0}

    def close(self) -> None:
        self._closed = True
        self._wakeup.set()


def _as_uuid(value: Any) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))


def _recorded(stored: StoredEvent, *, offset: int) -> RecordedEvent:
    return RecordedEvent(
        aggregate_id=_as_uuid(stored.originator_id),
        version=stored.originator_version,
        topic=stored.topic,
        state=bytes(stored.state),
        partition=0,
        offset=offset,
    )
