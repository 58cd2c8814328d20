"""The event-store interface every backend implements, and the factory that picks one.

Positions follow Kafka's convention everywhere: for each partition, the offset *just past* the
last event of interest (the next offset to read). The embedded SQL backends are a feed with one
partition whose offsets are their notification ids. Offsets may have gaps (Kafka's transaction
markers take offsets), so never assume an offset equals a version or that offsets are contiguous.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self
from urllib.parse import urlsplit
from uuid import UUID

from framework.errors import ConfigurationError
from framework.loading import import_object

if TYPE_CHECKING:
    from framework.application import Application, CommandRouter

__all__ = [
    "BACKENDS",
    "ConsumerSettings",
    "EventStore",
    "FeedReader",
    "NewEvent",
    "OnAssign",
    "OnRevoke",
    "Positions",
    "RecordedEvent",
    "Snapshot",
    "open_store",
    "refuse_missing_store",
    "store_url_from_env",
]

Positions = dict[int, int]
"""For each partition, the offset just past the last event (the next offset to read)."""

OnAssign = Callable[[set[int]], Mapping[int, int]]
"""Called when partitions are assigned to a feed reader; returns where to start in each."""

OnRevoke = Callable[[set[int]], None]
"""Called when partitions are taken away from a feed reader (a consumer-group rebalance)."""


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    """How a feed reader takes part in its consumer group (Kafka; the embedded stores, which
    have no group, ignore it). Times are in seconds."""

    session_timeout: float = 10.0
    """Without a heartbeat for this long, a member's partitions go to the others."""
    heartbeat_interval: float = 2.0
    max_poll_interval: float = 300.0
    """A member that does not poll for this long is taken out of the group."""
    instance_id: str | None = None
    """A stable identity (static membership): a restarted member gets its partitions back at
    once instead of after a rebalance."""


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An encoded event, ready to append. ``version`` is the aggregate version it creates
    (the first event of an aggregate has version 1)."""

    aggregate_id: UUID
    version: int
    topic: str
    state: bytes
    route_with: UUID | None = None
    """Place the event in the same partition as this aggregate (used for command records, so a
    command and its events share a writer)."""


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as the store recorded it, with its position in the feed."""

    aggregate_id: UUID
    version: int
    topic: str
    state: bytes
    partition: int
    offset: int
    problem: str = ""
    """Why this record is in no aggregate's stream (it does not follow the store's layout, or
    repeats a version another record took first); empty for an event. Such records come with the
    nil aggregate id and version 0, and decoding them raises ``EventDecodingError``."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An aggregate's encoded state at ``version``; a cache that can always be rebuilt."""

    aggregate_id: UUID
    version: int
    topic: str
    state: bytes


class EventStore(ABC):
    """Stores events per aggregate with an optimistic-concurrency check, and serves them as a
    feed partitioned like a Kafka topic.

    Implementations: ``framework.backends.memory``, ``.sqlite``, ``.postgres`` and ``.kafka``.
    All of them pass the contract tests in ``tests/contract``.
    """

    name: str

    @property
    @abstractmethod
    def partitions(self) -> int:
        """How many partitions the feed has (1 for the embedded SQL backends)."""

    @abstractmethod
    def append(self, events: Sequence[NewEvent]) -> Positions:
        """Append ``events`` atomically: all of them or none.

        Raises :class:`~framework.errors.ConcurrencyError` when any ``(aggregate_id, version)``
        is already taken, and writes nothing. Returns, for each partition written, the offset
        just past the last event written there.
        """

    @abstractmethod
    def read(
        self, aggregate_id: UUID, *, after_version: int = 0, up_to_version: int | None = None
    ) -> list[RecordedEvent]:
        """Return one aggregate's events in version order, optionally a slice of them."""

    def read_for_decision(
        self, aggregate_id: UUID, *, after_version: int = 0
    ) -> list[RecordedEvent]:
        """Read events to decide a command on. A backend may answer from a cache that lags the
        log when its ``append`` checks versions against every committed write: a stale answer
        then costs a ConcurrencyError, which ``execute`` retries on fresher state. Queries use
        :meth:`read`, which is always up to date."""
        return self.read(aggregate_id, after_version=after_version)

    @abstractmethod
    def read_partition(self, partition: int, *, start: int, limit: int) -> list[RecordedEvent]:
        """Return up to ``limit`` events of one partition whose offset is ``>= start``, in order."""

    @abstractmethod
    def head(self) -> Positions:
        """For each partition, the offset just past its last committed event."""

    @abstractmethod
    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Keep ``snapshot`` (replacing older ones of the same aggregate is allowed)."""

    @abstractmethod
    def latest_snapshot(self, aggregate_id: UUID) -> Snapshot | None:
        """Return the aggregate's newest snapshot, if any."""

    @abstractmethod
    def feed(
        self,
        group: str,
        *,
        on_assign: OnAssign,
        on_revoke: OnRevoke | None = None,
        consumer: ConsumerSettings | None = None,
    ) -> FeedReader:
        """Subscribe to every event, as member ``group`` of a consumer group (``consumer``:
        session timeout, heartbeat, static membership).

        Several readers with one ``group`` share the partitions (Kafka); ``on_assign`` tells the
        reader where to start in each partition it is given, so the caller keeps its positions
        itself (in the same SQL transaction as its read model, for exactly-once effects).
        """

    def partition_for(self, aggregate_id: UUID) -> int:
        """The partition that holds ``aggregate_id``'s events."""
        return 0

    def command_router(self, app: Application) -> CommandRouter | None:
        """How ``app``'s commands reach the process that decides them; None (the default)
        means "right here": the store's append checks versions for any number of writers."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold resources
        """Release connections, producers and files."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def iter_partition(
        self, partition: int, *, start: int = 0, batch: int = 1000
    ) -> Iterator[RecordedEvent]:
        """Every event of one partition from ``start`` up to the head when called."""
        stop = self.head().get(partition, 0)
        while start < stop:
            events = self.read_partition(partition, start=start, limit=batch)
            if not events:
                return
            for event in events:
                if event.offset >= stop:
                    return
                yield event
            start = events[-1].offset + 1


class FeedReader(ABC):
    """A live subscription to a store's feed, owned by one projection worker."""

    @abstractmethod
    def poll(self, *, max_records: int, timeout: float) -> list[RecordedEvent]:
        """Return the next events of the assigned partitions (possibly none, after ``timeout``
        seconds), each partition's events in offset order."""

    @abstractmethod
    def seek(self, partition: int, offset: int) -> None:
        """Make the next poll of ``partition`` start at ``offset``."""

    @abstractmethod
    def assignment(self) -> set[int]:
        """The partitions this reader currently owns."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Leave the group and release the connection."""


BACKENDS: dict[str, str] = {
    "memory": "framework.backends.memory",
    "sqlite": "framework.backends.sqlite",
    "postgresql": "framework.backends.postgres",
    "postgres": "framework.backends.postgres",
    "kafka": "framework.backends.kafka",
}
"""URL scheme -> module. Each module has ``open_store(url: str, *, name: str) -> EventStore``."""


def store_url_from_env(name: str, environ: Mapping[str, str] | None = None) -> str:
    """The event store URL for application ``name``: ``KEEL_<NAME>_EVENT_STORE``, else
    ``KEEL_EVENT_STORE``, else the embedded default ``sqlite:///var/<name>-events.db``."""
    env = os.environ if environ is None else environ
    for key in (f"KEEL_{name.upper()}_EVENT_STORE", "KEEL_EVENT_STORE"):
        if env.get(key):
            return env[key]
    return f"sqlite:///var/{name}-events.db"


def refuse_missing_store(url: str, *, check: str, user: str) -> None:
    """Refuse a SQLite store URL whose file does not exist: opening it would create an empty
    store, and a tool (``user``) that reads or appends to the application's store must find the
    one the application writes. ``check`` says where the URL came from."""
    if _scheme(url) != "sqlite":
        return
    from framework.backends.sqlite import store_path

    path = store_path(url)
    if path != ":memory:" and not Path(path).exists():
        raise ConfigurationError(
            f"the event store file {path} does not exist: check {check} ({user} uses the file "
            "the application writes; it never creates one)"
        )


def _scheme(url: str) -> str:
    return urlsplit(url).scheme.split("+", 1)[0]


def open_store(url: str, *, name: str) -> EventStore:
    """Open the event store that ``url`` names, for the application ``name``.

    ``url`` is either a URL whose scheme picks a backend (``memory://``,
    ``sqlite:///var/events.db``, ``postgresql://user@host/db``, ``kafka://host:9092``), or a
    dotted path ``package.module:factory`` to your own ``factory(url, name=...)``.
    """
    scheme = _scheme(url)
    if scheme in BACKENDS:
        module = importlib.import_module(BACKENDS[scheme])
        store: EventStore = module.open_store(url, name=name)
        return store
    if ":" in url and "/" not in url:
        factory = import_object(url, what="event store factory", example="myapp.stores:open_store")
        custom: EventStore = factory(url, name=name)
        return custom
    known = ", ".join(f"{s}://" for s in sorted(BACKENDS))
    raise ConfigurationError(
        f"unknown event store {url!r}: use one of {known} or a dotted path 'module:factory'"
    )


def group_by_partition(events: Iterable[RecordedEvent]) -> dict[int, list[RecordedEvent]]:
    """Split events by partition, keeping each partition's order."""
    grouped: dict[int, list[RecordedEvent]] = {}
    for event in events:
        grouped.setdefault(event.partition, []).append(event)
    return grouped
