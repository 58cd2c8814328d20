"""The projection that owns streaming tables, and its stream time.

:class:`StreamProjection` is a :class:`~framework.projection.Projection`: the worker, rebuild,
positions and dead letters work unchanged. Its declared tables (:class:`Windowed`, joins) are
maintained inside the worker's transaction, the one that moves the positions, so every change
is exactly-once. Two tables of its own hold what the rules below need, and being the
projection's tables, a rebuild fills shadow copies of them and swaps them in like the rest:

- ``<name>__stream_time``: per source partition ``p``, ``st[p]``, the largest event time applied
  from ``p`` (events and ticks).
- ``<name>__late_events``: every late event, with its lateness and what was done with it.

**The rules** (event time only; the wall clock never decides anything):

- An event from partition ``p`` is *late* for its window when its time is before
  ``st[p] - grace`` at the moment it is applied. That depends only on ``p``'s own sequence.
- A window closes when ``min over all partitions of st[p] - grace`` reaches its end. Then every
  partition has passed it, so nothing accepted can arrive after the close.

So whatever order partitions interleave in (live with two workers, or a rebuild), the accepted
events of every window are the same, and with commutative aggregates the tables are
byte-identical. Only *when* a window closes depends on the interleaving: effects of ``on_close``
are keyed by window, never by position. Idle partitions advance through tick records
(:func:`framework.streaming.tick`); the tick also tells how many partitions there are (or set
``partitions`` on the class). Until then no window closes.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RootTransaction

from framework.codec import EventEnvelope
from framework.domain import DomainEvent
from framework.errors import ConfigurationError
from framework.projection import Projection, handles
from framework.streaming._clock import Clock
from framework.streaming._late import accept
from framework.streaming._values import utc

__all__ = ["Stream", "StreamContext", "StreamProjection"]


def _recorded_time(event: Any) -> datetime:
    moment: datetime = event.timestamp
    return moment


class Stream:
    """Base of the declarations a :class:`StreamProjection` maintains (tables it owns)."""

    attr = ""
    grace = timedelta(0)
    closes = False
    """Whether the declaration acts when windows close (it then gets :meth:`close`)."""

    def __init__(self) -> None:
        self.tables: dict[str, sa.Table] = {}
        self._role_attrs: dict[str, str] = {}

    def bind(self, owner: type[StreamProjection], attr: str) -> None:
        if self.attr and self.attr != attr:
            raise ConfigurationError(f"{self!r} is declared twice ({self.attr} and {attr})")
        self.attr = attr

    @property
    def table(self) -> sa.Table:
        """The declaration's (live) table of rows, the one queries read."""
        return self.tables["rows"]

    def table_attr(self, role: str) -> str:
        return f"_{self.attr}__{role}"

    def current(self, projection: Projection, role: str) -> sa.Table:
        """This declaration's ``role`` table as ``projection`` sees it (shadow-aware)."""
        attr = self._role_attrs.get(role)
        if attr is None:  # looked up per event: the name is built once
            attr = self._role_attrs[role] = self.table_attr(role)
        table: sa.Table = getattr(projection, attr)
        return table

    def events(self) -> set[type[DomainEvent]]:
        raise NotImplementedError

    def apply(
        self, projection: Projection, ctx: StreamContext, event: Any, envelope: EventEnvelope
    ) -> None:
        raise NotImplementedError

    def close(self, projection: Projection, ctx: StreamContext, watermark: datetime) -> None:
        """Close what ``watermark`` (``min st[p]``, grace not yet subtracted) has passed."""


class StreamContext:
    """The stream state of one transaction: stream times and the late-event record."""

    def __init__(self, projection: StreamProjection, conn: Connection) -> None:
        self.projection = projection
        self.conn = conn
        self.times: dict[int, datetime] = {}
        self.partitions = type(projection).partitions
        self.cache: dict[str, Any] = {}
        self.dirty: dict[int, datetime] = {}
        self.accepting: tuple[int, int] | None = None
        """The (partition, offset) of a parked late event being re-driven now."""
        self.pending: dict[str, Callable[[], None]] = {}
        """Writes the streams hold back within a batch, by stream: see :meth:`flush`."""
        _serialize(conn, projection.key)
        for row in conn.execute(projection._statement("times")):
            if row.max_event_time is not None:
                self.times[row.partition] = utc(row.max_event_time)
            if row.partitions and type(projection).partitions is None:
                self.partitions = max(self.partitions or 0, row.partitions)

    def finish(self) -> None:
        """The end of a run of events: write what the streams held back, and the stream
        times that moved (inside the transaction, with the positions: one statement for
        the run, not one per event)."""
        self.flush()
        if self.dirty:
            self.conn.execute(
                self.projection._statement("time_update"),
                [{"p": p, "t": moment} for p, moment in sorted(self.dirty.items())],
            )
            self.dirty.clear()

    def flush(self) -> None:
        """Write what the streams held back: at the end of each batch, and before anything
        (a handler, a hook, a close) might read their tables."""
        for name in sorted(self.pending):
            write = self.pending.pop(name, None)
            if write is not None:
                write()

    def late_by(self, partition: int, moment: datetime, grace: timedelta) -> timedelta | None:
        """How late ``moment`` is in ``partition`` (``None``: on time)."""
        now = self.times.get(partition)
        if now is None or moment >= now - grace:
            return None
        return now - grace - moment

    def watermark(self) -> datetime | None:
        """``min st[p]`` over every partition, once every partition has a stream time."""
        if self.partitions is None or any(p not in self.times for p in range(self.partitions)):
            return None
        return min(self.times[p] for p in range(self.partitions))

    def closed(self, end: datetime, grace: timedelta) -> bool:
        """Whether a window ending at ``end`` is closed now."""
        mark = self.watermark()
        return mark is not None and mark - grace >= end

    def advance(self, partition: int, moment: datetime, partitions: int | None = None) -> bool:
        """Raise ``st[partition]`` to ``moment`` (a tick also stores the partition count it
        carries, on its own partition's row); True when the stream time moved."""
        was = self.times.get(partition)
        moved = was is None or moment > was
        if not moved and partitions is None:
            return False
        now = moment if was is None or moment > was else was
        values: dict[str, Any] = {"max_event_time": now}
        if partitions is not None:
            values["partitions"] = partitions
            if type(self.projection).partitions is None:
                self.partitions = max(self.partitions or 0, partitions)
        table = self.projection._keel_stream_time
        if was is None:
            self.conn.execute(table.insert().values(partition=partition, **values))
        elif partitions is None:
            self.dirty[partition] = now  # written once, at the end of the run (finish)
        else:
            self.dirty.pop(partition, None)
            self.conn.execute(table.update().where(table.c.partition == partition).values(values))
        self.times[partition] = now
        return moved

    def policy(self, late: str, envelope: EventEnvelope) -> str:
        """What to do with a late event: the stream's ``late`` policy, or ``"amend"`` for a
        parked one an operator accepted (``Clock.LateAccepted``)."""
        recorded = envelope.recorded
        return "amend" if self.accepting == (recorded.partition, recorded.offset) else late

    def record_late(
        self,
        stream: Stream,
        envelope: EventEnvelope,
        moment: datetime,
        window_start: datetime | None,
        late_by: timedelta,
        action: str,
    ) -> None:
        """Write the late event down: late events are never silent."""
        recorded = envelope.recorded
        if self.accepting == (recorded.partition, recorded.offset):
            return  # re-driven: written down when it was parked
        self.conn.execute(
            self.projection._keel_late_events.insert().values(
                stream=stream.attr,
                partition=recorded.partition,
                offset=recorded.offset,
                event_type=recorded.topic,
                aggregate_id=str(recorded.aggregate_id),
                version=recorded.version,
                event_time=moment,
                window_start=window_start,
                late_by_ms=late_by // timedelta(milliseconds=1),
                action=action,
                payload=recorded.state if action == "dead_letter" else None,
            )
        )


def _serialize(conn: Connection, key: str) -> None:
    """Take the projection's lock for this transaction, before reading any stream state.

    Windows, sessions and joins read rows that events of *other* partitions also change, so two
    workers applying concurrently could each miss the other's uncommitted change (a lost update,
    a session that should have merged, a join that never matched, a window nobody closes). On
    PostgreSQL a transaction-scoped advisory lock makes one streaming projection's transactions
    take turns across workers (its rebuild has its own key, so it runs beside them); SQLite
    serializes writers by itself. More workers then give availability, not parallel writes."""
    if conn.dialect.name == "postgresql":
        lock = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:lock)"), {"lock": lock})


def _framework_tables(name: str, metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    stream_time = sa.Table(
        f"{name}__stream_time",
        metadata,
        sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("max_event_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("partitions", sa.Integer, nullable=True),
    )
    late = sa.Table(
        f"{name}__late_events",
        metadata,
        sa.Column("stream", sa.String(100), primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("offset", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("event_type", sa.String(300), nullable=False),
        sa.Column("aggregate_id", sa.String(36), nullable=False),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("late_by_ms", sa.BigInteger, nullable=False),
        sa.Column("action", sa.String(12), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=True),
    )
    return stream_time, late


class StreamProjection(Projection):
    """A projection with streaming tables: declare :class:`Windowed` (and join) attributes
    next to ordinary ``sa.Table``s and ``@handles`` methods::

        class SalesPerHour(StreamProjection):
            name, version = "sales_per_hour", 2
            metadata = sa.MetaData()
            sales = Windowed("sales_per_hour", metadata, window=Tumbling(hours=1), ...)

    ``event_time`` gives an event's time (default: its recorded ``timestamp``); it advances the
    stream time of the partition the event came from.
    """

    event_time: ClassVar[Callable[[Any], datetime]] = staticmethod(_recorded_time)
    partitions: ClassVar[int | None] = None
    """How many partitions the source has; ``None``: learnt from tick records."""

    _keel_stream_time: ClassVar[sa.Table]
    _keel_late_events: ClassVar[sa.Table]
    _streams: ClassVar[dict[str, Stream]]
    _user_handlers: ClassVar[dict[type[DomainEvent], str]]
    _consumers: ClassVar[dict[type[DomainEvent], list[Stream]]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        streams: dict[str, Stream] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                if isinstance(value, Stream):
                    streams[attr] = value
        for attr, stream in streams.items():
            stream.bind(cls, attr)
            for role, table in stream.tables.items():
                setattr(cls, stream.table_attr(role), table)
        if cls.name and "_keel_stream_time" not in vars(cls):
            metadata = getattr(cls, "metadata", None)
            if metadata is None:
                raise ConfigurationError(f"{cls.__name__} needs a `metadata = sa.MetaData()`")
            cls._keel_stream_time, cls._keel_late_events = _framework_tables(cls.name, metadata)
        super().__init_subclass__(**kwargs)
        cls._streams = streams
        cls._user_handlers = {
            event_class: method
            for event_class, method in cls._handler_names.items()
            if method != "_keel_dispatch"
        }
        consumers: dict[type[DomainEvent], list[Stream]] = {}
        for stream in streams.values():
            for event_class in stream.events():
                consumers.setdefault(event_class, []).append(stream)
        cls._consumers = consumers
        handled: set[type[DomainEvent]] = {
            Clock.Ticked,
            Clock.LateAccepted,
            *cls._user_handlers,
            *consumers,
        }
        cls._handler_names = {event_class: "_keel_dispatch" for event_class in handled}

    def __init__(self) -> None:
        super().__init__()
        self._context: tuple[RootTransaction, StreamContext] | None = None
        self._closers = [s for s in self._streams.values() if s.closes]

    def _statement(self, role: str) -> Any:
        """The stream-time read (``times``) or update (``time_update``), built once per table
        (a shadow has its own): building a statement costs more than running it."""
        table = self._keel_stream_time
        cached = self.__dict__.setdefault("_keel_statements", {}).get(role)
        if cached is None or cached[0] is not table:
            if role == "times":
                statement: Any = sa.select(table)
            else:
                statement = (
                    table.update()
                    .where(table.c.partition == sa.bindparam("p"))
                    .values(max_event_time=sa.bindparam("t"))
                )
            cached = self.__dict__["_keel_statements"][role] = (table, statement)
        return cached[1]

    def stream_context(self, conn: Connection) -> StreamContext:
        """The stream state of ``conn``'s transaction (read once per transaction)."""
        transaction = conn.get_transaction()
        if transaction is None:
            raise ConfigurationError("streaming tables change only inside a transaction")
        if self._context is None or self._context[0] is not transaction:
            self._context = (transaction, StreamContext(self, conn))
        return self._context[1]

    @handles(Clock.Ticked, Clock.LateAccepted, batch=True)
    def _keel_dispatch(
        self, events: Sequence[Any], conn: Connection, envelopes: Sequence[EventEnvelope]
    ) -> None:
        """Every event the projection handles, a run at a time (``batch``: the streams fold a
        run's contributions and write them once, at its end). A failing run is retried one
        event at a time by the applier, so a bad event is still found and parked alone."""
        ctx = self.stream_context(conn)
        for event, envelope in zip(events, envelopes, strict=True):
            self._keel_apply(ctx, conn, event, envelope)
        ctx.finish()

    def _keel_apply(
        self, ctx: StreamContext, conn: Connection, event: Any, envelope: EventEnvelope
    ) -> None:
        partition = envelope.recorded.partition
        before = ctx.watermark()
        if isinstance(event, Clock.Ticked):
            ctx.advance(partition, utc(event.at), event.partitions)
        elif isinstance(event, Clock.LateAccepted):
            if event.projection == self.name and event.stream in self._streams:
                accept(self, ctx, self._streams[event.stream], partition, event.offset)
            return
        else:
            moment = utc(type(self).event_time(event))
            for stream in self._consumers.get(type(event), ()):
                stream.apply(self, ctx, event, envelope)
            method = self._user_handlers.get(type(event))
            if method is not None:
                ctx.flush()  # the handler may read the streams' tables
                handler = getattr(self, method)
                if "envelope" in inspect.signature(handler).parameters:
                    handler(event, conn, envelope=envelope)
                else:
                    handler(event, conn)
            ctx.advance(partition, moment)
        after = ctx.watermark()
        if after is not None and (before is None or after > before):
            for stream in self._closers:
                stream.close(self, ctx, after)
