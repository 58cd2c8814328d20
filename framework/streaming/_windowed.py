"""Windowed tables: grouped aggregates per window, with a contribution ledger.

Each contributing event is a *contribution* with an id (default: the event's aggregate id and
version), an event time, group-by key values and one value per aggregate. When the table
retracts or replaces, the ledger ``<table>__contrib`` remembers every live contribution, so a
retraction removes it from exactly the windows it was counted in and a replacement can move it
to other windows. Rows carry
``contributions``, ``revision`` (changes applied), ``late_events``, ``amended_after_close`` and
``closed``; rows of tables whose aggregates have no SQL arithmetic (mean, latest, collect,
custom) also keep the aggregate states as JSON in ``state``.

The rows themselves are kept by ``_fixed_windows`` (tumbling, hopping, calendar) and
``_session_windows`` (sessions merge and split; with ``emit="final"`` open ones wait in
``<table>__open``); a batch's writes are held back by ``_held_writes``; ``_closing`` closes
rows and runs ``on_close``, exactly once per window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from framework.codec import EventEnvelope
from framework.domain import DomainEvent
from framework.errors import ConfigurationError
from framework.projection import Projection
from framework.streaming._aggregates import Aggregate, Order
from framework.streaming._closing import CloseHook, close_windows
from framework.streaming._fixed_windows import FixedWindows
from framework.streaming._held_writes import flush, held
from framework.streaming._projection import Stream, StreamContext, StreamProjection
from framework.streaming._session_windows import SessionWindows
from framework.streaming._values import dumps, loads, utc
from framework.streaming._windows import Session, WindowShape

__all__ = ["LATE_POLICIES", "Windowed", "windowed_tables"]

_RESERVED = {
    "window_start",
    "window_end",
    "session_id",
    "contributions",
    "revision",
    "late_events",
    "amended_after_close",
    "closed",
    "state",
}
LATE_POLICIES = ("amend", "drop", "dead_letter")
KeySpec = Callable[[Any], Any] | tuple[sa.types.TypeEngine[Any], Callable[[Any], Any]]


def _pick(fn: Callable[[Any], Any], event: Any, name: str, previous: Mapping[str, Any]) -> Any:
    """``fn(event)``; for a replacement that lacks the field, the contribution's old value."""
    try:
        return fn(event)
    except AttributeError:
        if name in previous:
            return previous[name]
        raise


def _classes(spec: type[DomainEvent] | Iterable[type[DomainEvent]] | None) -> set[type[Any]]:
    if spec is None:
        return set()
    if isinstance(spec, type):
        return {spec}
    return set(spec)


class Windowed(Stream):
    """A table of aggregates per window and group-by key, maintained from events.

    ::

        sales = Windowed(
            "sales_per_hour", metadata,
            window=Tumbling(hours=1),
            key={"country": lambda e: e.ship_to.country},
            aggregates={"orders": Count(), "revenue": Sum(lambda e: e.total)},
            contributes=Order.Confirmed, contribution_id=lambda e: e.originator_id,
            retracts=Order.Cancelled, grace=timedelta(minutes=10), late="amend",
        )

    - ``window``: :class:`Tumbling`, :class:`Hopping`, :class:`Calendar` or :class:`Session`.
    - ``time``: the event time (default: the projection's ``event_time``). Never the clock.
    - ``key``: group-by columns, each a function of the event, or ``(sa type, function)``.
    - ``contributes``/``replaces``/``retracts``: the event classes that add a contribution,
      replace it (subtract the old, add the new, possibly in other windows) or remove it.
    - ``where``: a predicate; a contributing event it rejects contributes nothing (and a
      replacing one retracts).
    - ``late``: what to do with an event later than ``grace`` for its partition: ``"amend"``
      the row (it counts ``late_events`` and sets ``amended_after_close``), ``"drop"`` it or
      park it as ``"dead_letter"``. Each is recorded in ``<projection>__late_events``.
    - ``emit``: ``"update"`` (rows change as events arrive) or ``"final"`` (a row appears when
      its window closes; until then it is kept in ``<table>__open``). ``on_close(row, ctx)``
      runs once per window as it closes, in the transaction that closed it (or that wrote a
      row after its window had closed); key its effects by ``ctx.effect_id`` (a ``uuid5`` of
      the table and the window's start and key, or of the table and the ``session_id``). With
      sessions, ``<table>__announced`` lists the ids announced.
    - ``retention``: forget ledger entries this long after their window closed (a retraction
      after that changes nothing).
    """

    def __init__(
        self,
        name: str,
        metadata: sa.MetaData,
        *,
        window: WindowShape,
        aggregates: Mapping[str, Aggregate],
        contributes: type[DomainEvent] | Iterable[type[DomainEvent]],
        key: Mapping[str, KeySpec] | None = None,
        time: Callable[[Any], datetime] | None = None,
        contribution_id: Callable[[Any], Any] | None = None,
        retracts: type[DomainEvent] | Iterable[type[DomainEvent]] | None = None,
        replaces: type[DomainEvent] | Iterable[type[DomainEvent]] | None = None,
        where: Callable[[Any], bool] | None = None,
        grace: timedelta = timedelta(0),
        late: str = "amend",
        emit: str = "update",
        retention: timedelta | None = None,
        on_close: CloseHook | None = None,
    ) -> None:
        super().__init__()
        self.pending_key = self.next_close_key = ""  # set by bind
        self.name = name
        self.window = window
        self.aggregates = dict(aggregates)
        self.key: dict[str, tuple[sa.types.TypeEngine[Any], Callable[[Any], Any]]] = {
            column: spec if isinstance(spec, tuple) else (sa.String(100), spec)
            for column, spec in (key or {}).items()
        }
        self.time = time
        self.contribution_id = contribution_id
        self._contributes = _classes(contributes)
        self._retracts = _classes(retracts)
        self._replaces = _classes(replaces)
        self.where = where
        self.grace = grace
        self.late = late
        self.emit = emit
        self.retention = retention
        self.on_close = on_close
        self.session = isinstance(window, Session)
        # The ledger is what retractions and replacements undo; without them it is not kept.
        self.ledgered = bool(self._retracts or self._replaces)
        self._check()
        # The fast path: SQL arithmetic only, no row read per event (sessions merge rows, and
        # aggregates without SQL keep their states as JSON). Buffered: one UPSERT per window
        # and batch, when every aggregate's SQL can merge a folded state.
        self.fast = self.fast_possible()
        self.buffered = self.fast and all(a.has_sql_merge for a in self.aggregates.values())
        self.closes = True
        self.keeper: FixedWindows | SessionWindows = (
            SessionWindows(self) if self.session else FixedWindows(self)
        )
        """Keeps the rows: sessions merge and split, fixed windows add and remove."""
        self.statements: dict[tuple[Any, ...], tuple[sa.Table, Any]] = {}
        """Statements built once per table (and dialect): see ``_held_writes``."""
        self.tables = {"rows": self._rows_table(name, metadata), "contrib": self._ledger(metadata)}
        if emit == "final":
            self.tables["open"] = self._rows_table(f"{name}__open", metadata)
        if self.session and on_close is not None:
            # Every session id whose on_close has run: a merge can absorb an announced
            # session, and a split bring its id back.
            self.tables["announced"] = sa.Table(
                f"{name}__announced", metadata, sa.Column("session_id", sa.Uuid, primary_key=True)
            )

    def bind(self, owner: type[StreamProjection], attr: str) -> None:
        super().bind(owner, attr)
        # Keys of the transaction's cache, built once (they are looked up per event).
        self.pending_key = f"{attr}:pending"
        self.next_close_key = f"{attr}:next_close"

    def _check(self) -> None:
        if not self.aggregates:
            raise ConfigurationError(f"{self.name}: give at least one aggregate")
        clash = (set(self.aggregates) | set(self.key)) & _RESERVED
        clash |= set(self.aggregates) & set(self.key)
        if clash:
            raise ConfigurationError(
                f"{self.name}: column names {sorted(clash)} are taken "
                f"(reserved: {sorted(_RESERVED)}; keys and aggregates must differ)"
            )
        if self.late not in LATE_POLICIES:
            raise ConfigurationError(f"{self.name}: late= must be one of {LATE_POLICIES}")
        if self.emit not in ("update", "final"):
            raise ConfigurationError(f"{self.name}: emit= must be 'update' or 'final'")
        if not self._contributes:
            raise ConfigurationError(f"{self.name}: contributes= needs an event class")
        if self.session and any(a.counts_retractions for a in self.aggregates.values()):
            raise ConfigurationError(f"{self.name}: Retractions() cannot follow sessions")
        for name, aggregate in self.aggregates.items():
            if not isinstance(aggregate, Aggregate):
                raise ConfigurationError(f"{self.name}.{name}: not an Aggregate: {aggregate!r}")

    # -- tables ---------------------------------------------------------------------------------

    def _rows_table(self, name: str, metadata: sa.MetaData) -> sa.Table:
        columns: list[Any] = [
            sa.Column(k, type_, primary_key=True) for k, (type_, _fn) in self.key.items()
        ]
        columns += [
            sa.Column("window_start", sa.DateTime(timezone=True), primary_key=True),
            sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        ]
        if self.session:
            columns.append(sa.Column("session_id", sa.Uuid, nullable=False, unique=True))
        columns += [sa.Column(n, a.type, nullable=True) for n, a in self.aggregates.items()]
        columns += [
            sa.Column("contributions", sa.Integer, nullable=False),
            sa.Column("revision", sa.Integer, nullable=False),
            sa.Column("late_events", sa.Integer, nullable=False),
            sa.Column("amended_after_close", sa.Boolean, nullable=False),
            sa.Column("closed", sa.Boolean, nullable=False),
        ]
        if not self.fast_possible():
            columns.append(sa.Column("state", sa.Text, nullable=False))
        return sa.Table(
            name, metadata, *columns, sa.Index(f"ix_{name}_close", "closed", "window_end")
        )

    def fast_possible(self) -> bool:
        return not self.session and all(a.has_sql for a in self.aggregates.values())

    def _ledger(self, metadata: sa.MetaData) -> sa.Table:
        return sa.Table(
            f"{self.name}__contrib",
            metadata,
            sa.Column("contribution_id", sa.String(200), primary_key=True),
            sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
            *(sa.Column(k, type_, nullable=True) for k, (type_, _fn) in self.key.items()),
            sa.Column("late", sa.Boolean, nullable=False),
            sa.Column("contributed", sa.Text, nullable=False),
            sa.Index(f"ix_{self.name}__contrib_key", *self.key, "event_time"),
        )

    @property
    def ledger(self) -> sa.Table:
        """The (live) contribution ledger."""
        return self.tables["contrib"]

    def events(self) -> set[type[DomainEvent]]:
        return self._contributes | self._retracts | self._replaces

    def query(
        self, conn: sa.Connection, *, table: sa.Table | None = None, **filters: Any
    ) -> list[dict[str, Any]]:
        """A pull query (the ksqlDB subset): ``sales.query(conn, country="CH",
        window_start__gte=t0, window_start__lt=t1)``, rows in key and window order. Filters
        are ``column=value`` or ``column__gt|gte|lt|lte|in=value``; ``table`` is the table to
        read (default: the live one)."""
        target = table if table is not None else self.table
        operators = {"gt": "__gt__", "gte": "__ge__", "lt": "__lt__", "lte": "__le__"}
        where = []
        for name, value in filters.items():
            column_name, _, op = name.partition("__")
            if column_name not in target.c or (op and op not in (*operators, "in")):
                raise ConfigurationError(
                    f"{self.name}: cannot filter on {name!r}: give a column of "
                    f"{sorted(target.c.keys())} with an optional __gt, __gte, __lt, __lte or __in"
                )
            column = target.c[column_name]
            if op == "in":
                where.append(column.in_(list(value)))
            else:
                where.append(getattr(column, operators.get(op, "__eq__"))(value))
        order = [*(target.c[k] for k in self.key), target.c.window_start]
        rows = conn.execute(sa.select(target).where(*where).order_by(*order))
        return [{k: v for k, v in r._mapping.items() if k != "state"} for r in rows]

    # -- applying -------------------------------------------------------------------------------

    def apply(
        self, projection: Projection, ctx: StreamContext, event: Any, envelope: EventEnvelope
    ) -> None:
        cls = type(event)
        counts = self.where is None or self.where(event)
        if cls in self._retracts:
            self._retract(projection, ctx, event, envelope, retracted=True)
        elif cls in self._replaces:
            previous = self._retract(projection, ctx, event, envelope, retracted=False)
            if counts:
                self._contribute(
                    projection, ctx, event, envelope, previous=previous, replacing=True
                )
        elif counts:
            self._contribute(projection, ctx, event, envelope)

    def _cid(self, event: Any) -> str:
        if self.contribution_id is None:
            return f"{event.originator_id}:{event.originator_version}"
        return str(self.contribution_id(event))

    def _time(self, projection: Projection, event: Any) -> datetime:
        moment = self.time(event) if self.time else type(projection).event_time(event)  # type: ignore[attr-defined]
        return utc(moment)

    def _contribute(
        self,
        projection: Projection,
        ctx: StreamContext,
        event: Any,
        envelope: EventEnvelope,
        *,
        previous: tuple[dict[str, Any], dict[str, Any]] | None = None,
        replacing: bool = False,
    ) -> None:
        quiet = replacing
        cid = self._cid(event)
        moment = self._time(projection, event)
        if not replacing:
            key = {k: fn(event) for k, (_type, fn) in self.key.items()}
            values = {n: a.value(event) for n, a in self.aggregates.items()}
        else:
            old_key, old_values = previous or ({}, {})
            try:
                key = {k: _pick(fn, event, k, old_key) for k, (_type, fn) in self.key.items()}
                values = {
                    n: _pick(a.value, event, n, old_values) for n, a in self.aggregates.items()
                }
            except AttributeError:
                return  # a partial correction of what never counted (dropped as late): nothing
        late_by = ctx.late_by(envelope.recorded.partition, moment, self.grace)
        late = late_by is not None
        if late_by is not None:
            # A replacement is a correction: it always applies, like a retraction.
            action = "amend" if quiet else ctx.policy(self.late, envelope)
            if not ctx.cache.get(self._late_key(envelope)):
                window = self.window.windows(moment)[0][0]
                ctx.record_late(self, envelope, moment, window, late_by, action)
            if action != "amend":
                return
        if self.ledgered:
            pending = held(self, ctx)
            pending.ledger_table = self.current(projection, "contrib")
            pending.ledger.append(
                {
                    "contribution_id": cid,
                    "event_time": moment,
                    "late": late,
                    "contributed": dumps(values),
                    **key,
                }
            )
        order: Order = (moment, cid)
        self.keeper.add(projection, ctx, key, moment, values, order, late)

    def _late_key(self, envelope: EventEnvelope) -> str:
        return f"{self.attr}:late:{envelope.recorded.partition}:{envelope.recorded.offset}"

    def _retract(
        self,
        projection: Projection,
        ctx: StreamContext,
        event: Any,
        envelope: EventEnvelope,
        *,
        retracted: bool,
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Remove the event's contribution; returns its key and values (``None``: none)."""
        flush(self, ctx)  # the ledger and the rows as the events before this one left them
        ledger = self.current(projection, "contrib")
        cid = self._cid(event)
        found = ctx.conn.execute(sa.select(ledger).where(ledger.c.contribution_id == cid)).first()
        if found is None:
            return None  # never counted (or forgotten after its retention)
        ctx.conn.execute(ledger.delete().where(ledger.c.contribution_id == cid))
        moment = utc(found.event_time)
        key = {k: getattr(found, k) for k in self.key}
        values = loads(found.contributed)
        late_by = ctx.late_by(envelope.recorded.partition, moment, self.grace)
        late = late_by is not None
        if late_by is not None:
            # Corrections always apply (dropping one would leave the figures wrong for good),
            # but a correction of a window its partition has passed is recorded as late.
            ctx.record_late(
                self, envelope, moment, self.window.windows(moment)[0][0], late_by, "amend"
            )
            ctx.cache[self._late_key(envelope)] = True
        order: Order = (moment, cid)
        self.keeper.remove(projection, ctx, key, moment, values, order, late, retracted)
        return key, values

    def pk(self, table: sa.Table, key: Mapping[str, Any], start: datetime) -> list[Any]:
        """The conditions that pick the key's window (or session) starting at ``start``."""
        return [table.c.window_start == start, *(table.c[k] == v for k, v in key.items())]

    def close(self, projection: Projection, ctx: StreamContext, watermark: datetime) -> None:
        close_windows(self, projection, ctx, watermark)


def windowed_tables(projection: type[StreamProjection]) -> list[Windowed]:
    """The windowed declarations of a projection class."""
    return [s for s in projection._streams.values() if isinstance(s, Windowed)]
