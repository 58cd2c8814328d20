"""Windowed tables: grouped aggregates per window, with a contribution ledger.

Each contributing event is a *contribution* with an id (default: the event's aggregate id and
version), an event time, group-by key values and one value per aggregate. When the table
retracts or replaces, the ledger ``<table>__contrib`` remembers every live contribution, so a
retraction removes it from exactly the windows it was counted in and a replacement can move it
to other windows. Rows carry
``contributions``, ``revision`` (changes applied), ``late_events``, ``amended_after_close`` and
``closed``; rows of tables whose aggregates have no SQL arithmetic (mean, latest, collect,
custom) also keep the aggregate states as JSON in ``state``.

Sessions with ``emit="final"`` live in ``<table>__open`` until the watermark passes their end
plus grace, then move to the table and ``on_close`` runs for them. Rows are a function of the
accepted events alone (sessions are those events clustered by the gap, named after their first
contribution), so they are the same in every interleaving. A late event the policy amends, or a
correction, can still change a closed session: the row is amended in place (a late event that
bridges two closed sessions merges them into one row under the earlier's id; one that extends a
session past the watermark takes it back to ``__open`` until it closes again). ``on_close`` runs
once for every session id that reaches the table, never again for it; a history that closed a
session before such a change has also announced the id it had then.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from framework.codec import EventEnvelope
from framework.domain import DomainEvent
from framework.errors import ConfigurationError
from framework.projection import Projection
from framework.streaming._aggregates import RECOMPUTE, Aggregate, Order
from framework.streaming._projection import Stream, StreamContext, StreamProjection
from framework.streaming._values import dumps, loads, utc
from framework.streaming._windows import Session, WindowShape

__all__ = ["CloseContext", "CloseHook", "Windowed"]

_SESSION_IDS = uuid.UUID("0f6b8b8e-5a57-4d0c-b3d1-8f1f3c2a9e41")
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


class CloseContext:
    """What an ``on_close`` hook gets besides the row: the transaction's connection and an
    ``effect_id`` unique to the window (``uuid5`` of table, window and key) to key any effect
    by, so a rebuild or a second worker that closes the same window again changes nothing."""

    def __init__(self, conn: sa.Connection, effect_id: uuid.UUID, projection: Projection) -> None:
        self.conn = conn
        self.effect_id = effect_id
        self.projection = projection


CloseHook = Callable[[dict[str, Any], CloseContext], None]
"""The shape of ``Windowed(on_close=...)`` and ``IntervalJoin(on_unmatched=...)``: the row as a
dict and a :class:`CloseContext`. It runs inside the projection's transaction, once per window
(or unmatched row) in every history; key any effect by ``ctx.effect_id`` (an outbox row, a
command id) so a rebuild or a second close adds nothing: the trigger of a process manager."""


@dataclass
class _Pending:
    """The contributions a batch made to one window, folded (written by ``_flush``)."""

    key: Mapping[str, Any]
    start: datetime
    end: datetime
    states: dict[str, Any]
    closed: bool
    count: int = 0
    late: int = 0


@dataclass
class _Writes:
    """A windowed table's writes held back within a batch."""

    rows: dict[tuple[Any, ...], _Pending] = field(default_factory=dict)
    ledger: list[dict[str, Any]] = field(default_factory=list)
    ledger_table: sa.Table | None = None


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
      runs once per window as it closes, in the transaction that closed it; key its effects by
      ``ctx.effect_id`` (a session's: its ``session_id``).
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
        self._pending_key = self._next_close_key = ""  # set by bind
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
        self._statements: dict[tuple[str, str], tuple[sa.Table, Any]] = {}
        self.tables = {"rows": self._rows_table(name, metadata), "contrib": self._ledger(metadata)}
        if emit == "final":
            self.tables["open"] = self._rows_table(f"{name}__open", metadata, open_table=True)

    def bind(self, owner: type[StreamProjection], attr: str) -> None:
        super().bind(owner, attr)
        # Keys of the transaction's cache, built once (they are looked up per event).
        self._pending_key = f"{attr}:pending"
        self._next_close_key = f"{attr}:next_close"

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

    def _rows_table(
        self, name: str, metadata: sa.MetaData, *, open_table: bool = False
    ) -> sa.Table:
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
        if open_table and self.session:
            # A closed session a late event or correction opened again: its on_close has run.
            columns.append(sa.Column("announced", sa.Boolean, nullable=False))
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
            pending = self._pending(ctx)
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
        if self.session:
            self._session_add(projection, ctx, key, moment, values, order, late)
            return
        for start, end in self.window.windows(moment):
            self._add(projection, ctx, key, start, end, values, order, late)

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
        self._flush(ctx)  # the ledger and the rows as the events before this one left them
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
        if self.session:
            self._session_remove(projection, ctx, key, moment, late)
        else:
            for start, end in self.window.windows(moment):
                self._remove(projection, ctx, key, start, end, values, order, late, retracted)
        return key, values

    # -- fixed windows --------------------------------------------------------------------------

    def _target(self, projection: Projection, ctx: StreamContext, end: datetime) -> sa.Table:
        if self.emit == "final" and not ctx.closed(end, self.grace):
            return self.current(projection, "open")
        return self.current(projection, "rows")

    def _pk(self, table: sa.Table, key: Mapping[str, Any], start: datetime) -> list[Any]:
        return [table.c.window_start == start, *(table.c[k] == v for k, v in key.items())]

    def _add(
        self,
        projection: Projection,
        ctx: StreamContext,
        key: Mapping[str, Any],
        start: datetime,
        end: datetime,
        values: Mapping[str, Any],
        order: Order,
        late: bool,
    ) -> None:
        table = self._target(projection, ctx, end)
        closed = ctx.closed(end, self.grace)
        if not closed:
            self._note_open(ctx, end)
        if not self.fast:
            row = ctx.conn.execute(sa.select(table).where(*self._pk(table, key, start))).first()
            states = self._states(row)
            states = {n: a.add(states[n], values[n], order) for n, a in self.aggregates.items()}
            self._write(ctx, table, row, key, start, end, states, late, closed, delta=1)
            return
        if not self.buffered:
            params = self._params(key, start, end, 1, int(late), closed)
            for n, a in self.aggregates.items():
                params[n] = a.result(a.add(a.init(), values[n], order))
                params[f"v_{n}"] = values[n]
            ctx.conn.execute(self._upsert(ctx.conn, table), params)
            return
        # Fold into the batch's pending row of this window: one UPSERT per window and batch,
        # written before anything reads the table (see _flush).
        pending = self._pending(ctx)
        slot = (table, start, *key.values())
        entry = pending.rows.get(slot)
        if entry is None:
            entry = pending.rows[slot] = _Pending(
                key, start, end, {n: a.init() for n, a in self.aggregates.items()}, closed
            )
        for n, a in self.aggregates.items():
            entry.states[n] = a.add(entry.states[n], values[n], order)
        entry.count += 1
        entry.late += late

    def _pending(self, ctx: StreamContext) -> _Writes:
        pending: _Writes | None = ctx.cache.get(self._pending_key)
        if pending is None:
            pending = ctx.cache[self._pending_key] = _Writes()
            ctx.pending[self.attr] = lambda: self._flush(ctx)
        return pending

    def _flush(self, ctx: StreamContext) -> None:
        """Write what this batch folded: ledger entries, then one UPSERT per window (an
        ``executemany`` per table). The result is the one per-event statements would give:
        every fast aggregate's SQL merges a folded state as it adds a value."""
        pending: _Writes | None = ctx.cache.pop(self._pending_key, None)
        ctx.pending.pop(self.attr, None)
        if pending is None:
            return
        if pending.ledger_table is not None and pending.ledger:
            ctx.conn.execute(self._ledger_insert(pending.ledger_table), pending.ledger)
        by_table: dict[sa.Table, list[dict[str, Any]]] = {}
        for (table, *_slot), entry in pending.rows.items():
            params = self._params(
                entry.key, entry.start, entry.end, entry.count, entry.late, entry.closed
            )
            for n, a in self.aggregates.items():
                params[n] = a.result(entry.states[n])
                params[f"v_{n}"] = entry.states[n]
            by_table.setdefault(table, []).append(params)
        for table, rows in by_table.items():
            ctx.conn.execute(self._upsert(ctx.conn, table), rows)

    @staticmethod
    def _params(
        key: Mapping[str, Any], start: datetime, end: datetime, n: int, late: int, closed: bool
    ) -> dict[str, Any]:
        return {
            **key,
            "window_start": start,
            "window_end": end,
            "n": n,
            "late_n": late,
            "late_b": late > 0,
            "closed": closed,
        }

    def _ledger_insert(self, ledger: sa.Table) -> Any:
        cached = self._statements.get((ledger.name, "insert"))
        if cached is None or cached[0] is not ledger:
            columns = ["contribution_id", "event_time", "late", "contributed", *self.key]
            statement = ledger.insert().values({c: sa.bindparam(c) for c in columns})
            cached = (ledger, statement)
            self._statements[(ledger.name, "insert")] = cached
        return cached[1]

    def _upsert(self, conn: sa.Connection, table: sa.Table) -> Any:
        """The fast path's one statement (built once per table and dialect: building a
        statement per event costs more than running it): ``n`` contributions folded into the
        states ``v_<aggregate>``."""
        cache_key = (table.name, conn.dialect.name)
        cached = self._statements.get(cache_key)
        if cached is not None and cached[0] is table:
            return cached[1]
        from sqlalchemy.dialects import postgresql, sqlite

        c = table.c
        count = sa.bindparam("n", type_=sa.Integer())
        late_n = sa.bindparam("late_n", type_=sa.Integer())
        late_b = sa.bindparam("late_b", type_=sa.Boolean())
        insert_values: dict[str, Any] = {k: sa.bindparam(k) for k in self.key}
        insert_values.update(
            window_start=sa.bindparam("window_start"),
            window_end=sa.bindparam("window_end"),
            contributions=count,
            revision=count,
            late_events=late_n,
            amended_after_close=late_b,
            closed=sa.bindparam("closed"),
        )
        update: dict[str, Any] = {
            "contributions": c.contributions + count,
            "revision": c.revision + count,
            "late_events": c.late_events + late_n,
            "amended_after_close": sa.or_(c.amended_after_close, late_b),
        }
        for n, a in self.aggregates.items():
            insert_values[n] = sa.bindparam(n, type_=a.type)
            folded = sa.bindparam(f"v_{n}", type_=a.type)
            expression = a.sql_merge(c[n], folded) if self.buffered else a.sql_add(c[n], folded)
            if expression is not None and expression is not c[n]:
                update[n] = expression
        dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
        statement = (
            dialect.insert(table)
            .values(insert_values)
            .on_conflict_do_update(
                index_elements=[col.name for col in table.primary_key.columns], set_=update
            )
        )
        # Neither dialect's INSERT ... ON CONFLICT has a cache key (SQLAlchemy compiles it on
        # every execution): compile it once into a text statement with typed parameters.
        compiled = statement.compile(dialect=dialect.dialect(paramstyle="named"))
        text = sa.text(str(compiled)).bindparams(
            *(
                sa.bindparam(name, value=bind.value, type_=bind.type)
                for bind, name in compiled.bind_names.items()
            )
        )
        self._statements[cache_key] = (table, text)
        return text

    def _remove(
        self,
        projection: Projection,
        ctx: StreamContext,
        key: Mapping[str, Any],
        start: datetime,
        end: datetime,
        values: Mapping[str, Any],
        order: Order,
        late: bool,
        retracted: bool,
    ) -> None:
        table = self._target(projection, ctx, end)
        c = table.c
        if self.fast:
            changes: dict[str, Any] = {}
            for n, a in self.aggregates.items():
                expression = a.sql_remove(c[n], values[n], retracted=retracted)
                if expression is None:
                    break
                if expression is not c[n]:
                    changes[n] = expression
            else:
                changes.update(contributions=c.contributions - 1, revision=c.revision + 1)
                if late:
                    changes.update(late_events=c.late_events + 1, amended_after_close=True)
                ctx.conn.execute(table.update().where(*self._pk(table, key, start)).values(changes))
                return
        row = ctx.conn.execute(sa.select(table).where(*self._pk(table, key, start))).first()
        if row is None:
            return
        states = self._states(row)
        removed = {
            n: a.remove(states[n], values[n], order, retracted=retracted)
            for n, a in self.aggregates.items()
        }
        if any(s is RECOMPUTE for s in removed.values()):
            removed = self._refold(projection, ctx, key, start, end, states, retracted)
        self._write(
            ctx, table, row, key, start, end, removed, late, ctx.closed(end, self.grace), delta=-1
        )

    def _refold(
        self,
        projection: Projection,
        ctx: StreamContext,
        key: Mapping[str, Any],
        start: datetime,
        end: datetime,
        states: Mapping[str, Any],
        retracted: bool,
    ) -> dict[str, Any]:
        """Fold a window again from its ledger (after a removal the states cannot undo)."""
        fresh = {n: a.init() for n, a in self.aggregates.items()}
        for cid, moment, values in self._contributions(projection, ctx, key, start, end):
            for n, a in self.aggregates.items():
                fresh[n] = a.add(fresh[n], values[n], (moment, cid))
        for n, a in self.aggregates.items():
            if a.counts_retractions:
                fresh[n] = a.remove(states[n], None, (start, ""), retracted=retracted)
        return fresh

    def _contributions(
        self,
        projection: Projection,
        ctx: StreamContext,
        key: Mapping[str, Any],
        start: datetime,
        end: datetime,
        *,
        inclusive: bool = False,
    ) -> list[tuple[str, datetime, dict[str, Any]]]:
        ledger = self.current(projection, "contrib")
        c = ledger.c
        upper = c.event_time <= end if inclusive else c.event_time < end
        rows = ctx.conn.execute(
            sa.select(c.contribution_id, c.event_time, c.contributed, c.late).where(
                *(c[k] == v for k, v in key.items()), c.event_time >= start, upper
            )
        ).all()
        found = [(r.contribution_id, utc(r.event_time), loads(r.contributed), r.late) for r in rows]
        found.sort(key=lambda r: (r[1], r[0]))
        return [(cid, moment, values) for cid, moment, values, _late in found]

    def _states(self, row: Any) -> dict[str, Any]:
        if row is None:
            return {n: a.init() for n, a in self.aggregates.items()}
        if self.fast:
            return {n: getattr(row, n) for n in self.aggregates}
        stored: dict[str, Any] = loads(row.state)
        return stored

    def _write(
        self,
        ctx: StreamContext,
        table: sa.Table,
        row: Any,
        key: Mapping[str, Any],
        start: datetime,
        end: datetime,
        states: Mapping[str, Any],
        late: bool,
        closed: bool,
        *,
        delta: int,
    ) -> None:
        values: dict[str, Any] = {n: a.result(states[n]) for n, a in self.aggregates.items()}
        if not self.fast:
            values["state"] = dumps(dict(states))
        if row is None:
            ctx.conn.execute(
                table.insert().values(
                    **key,
                    window_start=start,
                    window_end=end,
                    contributions=max(delta, 0),
                    revision=1,
                    late_events=int(late),
                    amended_after_close=late,
                    closed=closed,
                    **values,
                )
            )
            return
        ctx.conn.execute(
            table.update()
            .where(*self._pk(table, key, start))
            .values(
                contributions=row.contributions + delta,
                revision=row.revision + 1,
                late_events=row.late_events + int(late),
                amended_after_close=row.amended_after_close or late,
                **values,
            )
        )

    # -- sessions -------------------------------------------------------------------------------

    def _gap(self) -> timedelta:
        assert isinstance(self.window, Session)
        return self.window.gap

    def _session_id(self, key: Mapping[str, Any], first: str) -> uuid.UUID:
        return uuid.uuid5(_SESSION_IDS, dumps([self.name, dict(key), first]))

    def _session_tables(self, projection: Projection) -> list[tuple[sa.Table, bool]]:
        """Where sessions live, with whether a row there has been announced: the result table
        (with ``emit="final"`` only closed sessions, all announced) and the open ones'."""
        if self.emit == "update":
            return [(self.current(projection, "rows"), False)]
        return [(self.current(projection, "rows"), True), (self.current(projection, "open"), False)]

    def _session_rows(
        self, projection: Projection, ctx: StreamContext, key: Mapping[str, Any], *where: Any
    ) -> list[tuple[sa.Table, Any, bool]]:
        """The key's sessions matching ``where`` (on columns both tables have), each with its
        table and whether its ``on_close`` has run."""
        found: list[tuple[sa.Table, Any, bool]] = []
        for table, announced in self._session_tables(projection):
            c = table.c
            condition = [clause(c) for clause in where]
            for row in ctx.conn.execute(
                sa.select(table).where(*(c[k] == v for k, v in key.items()), *condition)
            ):
                seen = announced or bool(getattr(row, "announced", False))
                found.append((table, row, seen))
        return found

    def _session_add(
        self,
        projection: Projection,
        ctx: StreamContext,
        key: Mapping[str, Any],
        moment: datetime,
        values: Mapping[str, Any],
        order: Order,
        late: bool,
    ) -> None:
        gap = self._gap()
        # Sessions end `gap` after their last event; an event less than `gap` from one joins it,
        # and one that bridges several merges them (open or closed: the rows are the same in
        # every interleaving; see _session_place for on_close).
        touching = self._session_rows(
            projection,
            ctx,
            key,
            lambda c: c.window_start < moment + gap,
            lambda c: c.window_end > moment,
        )
        states = {n: a.add(a.init(), values[n], order) for n, a in self.aggregates.items()}
        first = [order[0], order[1]]
        start, end = moment, moment + gap
        contributions, late_events = 1, int(late)
        announced: set[uuid.UUID] = set()
        for table, row, seen in touching:
            stored = loads(row.state)
            states = {n: a.merge(stored[n], states[n]) for n, a in self.aggregates.items()}
            if (stored["_first"][0], stored["_first"][1]) < (first[0], first[1]):
                first = stored["_first"]
            start, end = min(start, utc(row.window_start)), max(end, utc(row.window_end))
            contributions += row.contributions
            late_events += row.late_events
            if seen:
                announced.add(row.session_id)
            ctx.conn.execute(table.delete().where(*self._pk(table, key, row.window_start)))
        self._session_place(
            projection, ctx, key, start, end, states, first, contributions, late_events, announced
        )

    def _session_place(
        self,
        projection: Projection,
        ctx: StreamContext,
        key: Mapping[str, Any],
        start: datetime,
        end: datetime,
        states: Mapping[str, Any],
        first: list[Any],
        contributions: int,
        late_events: int,
        announced: set[uuid.UUID],
    ) -> None:
        """Write a session where it belongs now. With ``emit="final"``: the result table once
        closed, else the open sessions' table (a late event can open a closed one again).
        ``announced`` are the ids among the rows it replaces whose ``on_close`` has run: a
        closed session gets its ``on_close`` when it closes under an id not among them."""
        session_id = self._session_id(key, first[1])
        closed = ctx.closed(end, self.grace)
        if not closed:
            self._note_open(ctx, end)
        row: dict[str, Any] = {
            **key,
            "window_start": start,
            "window_end": end,
            "session_id": session_id,
            "contributions": contributions,
            "revision": contributions,  # sessions: the events it holds (merges renumber)
            "late_events": late_events,
            "amended_after_close": late_events > 0,
            "closed": closed,
            "state": dumps({**states, "_first": first}),
            **{n: a.result(states[n]) for n, a in self.aggregates.items()},
        }
        if self.emit == "update" or closed:
            ctx.conn.execute(self.current(projection, "rows").insert().values(**row))
            if self.emit == "final" and session_id not in announced:
                self._announce(projection, ctx, row)
            return
        row["announced"] = session_id in announced
        ctx.conn.execute(self.current(projection, "open").insert().values(**row))

    def _session_remove(
        self,
        projection: Projection,
        ctx: StreamContext,
        key: Mapping[str, Any],
        moment: datetime,
        late: bool,
    ) -> None:
        holding = self._session_rows(
            projection,
            ctx,
            key,
            lambda c: c.window_start <= moment,
            lambda c: c.window_end > moment,
        )
        if not holding:
            return
        table, row, seen = holding[0]
        ctx.conn.execute(table.delete().where(*self._pk(table, key, row.window_start)))
        ledger = self.current(projection, "contrib")
        lc = ledger.c
        found = ctx.conn.execute(
            sa.select(lc.contribution_id, lc.event_time, lc.contributed, lc.late).where(
                *(lc[k] == v for k, v in key.items()),
                lc.event_time >= utc(row.window_start),
                lc.event_time < utc(row.window_end),
            )
        ).all()
        items = sorted(
            ((utc(r.event_time), r.contribution_id, loads(r.contributed), r.late) for r in found),
            key=lambda i: (i[0], i[1]),
        )
        # A removal can split a session in two: regroup what is left by the gap.
        gap = self._gap()
        pieces: list[list[Any]] = []
        for item in items:
            if pieces and item[0] - pieces[-1][-1][0] < gap:
                pieces[-1].append(item)
            else:
                pieces.append([item])
        announced = {row.session_id} if seen else set()
        for piece in pieces:
            states = {n: a.init() for n, a in self.aggregates.items()}
            for moment_, cid, values, _late in piece:
                for n, a in self.aggregates.items():
                    states[n] = a.add(states[n], values[n], (moment_, cid))
            self._session_place(
                projection,
                ctx,
                key,
                piece[0][0],
                piece[-1][0] + gap,
                states,
                [piece[0][0], piece[0][1]],
                len(piece),
                sum(1 for i in piece if i[3]),
                announced,
            )

    # -- closing --------------------------------------------------------------------------------

    def _note_open(self, ctx: StreamContext, end: datetime) -> None:
        known = ctx.cache.get(self._next_close_key, False)
        if known is not False and (known is None or end < known):
            ctx.cache[self._next_close_key] = end

    def _next_close(self, projection: Projection, ctx: StreamContext) -> datetime | None:
        name = self._next_close_key
        if name not in ctx.cache:
            self._flush(ctx)  # windows this batch opened are not in the table yet
            table = self.current(projection, "open" if self.emit == "final" else "rows")
            found = ctx.conn.execute(
                sa.select(sa.func.min(table.c.window_end)).where(table.c.closed.is_(False))
            ).scalar()
            ctx.cache[name] = None if found is None else utc(found)
        value: datetime | None = ctx.cache[name]
        return value

    def close(self, projection: Projection, ctx: StreamContext, watermark: datetime) -> None:
        limit = watermark - self.grace
        upcoming = self._next_close(projection, ctx)
        if upcoming is None or upcoming > limit:
            return
        ctx.flush()  # every pending write, before rows are read and hooks run
        rows_table = self.current(projection, "rows")
        source = self.current(projection, "open" if self.emit == "final" else "rows")
        due = [source.c.closed.is_(False), source.c.window_end <= limit]
        order = [*(source.c[k] for k in self.key), source.c.window_start]
        closing = [
            dict(r._mapping)
            for r in ctx.conn.execute(sa.select(source).where(*due).order_by(*order))
        ]
        announced = [bool(row.pop("announced", False)) for row in closing]
        for row in closing:
            row["closed"] = True
        if self.emit == "final":
            if closing:
                ctx.conn.execute(rows_table.insert(), closing)
            ctx.conn.execute(source.delete().where(*due))
        else:
            ctx.conn.execute(source.update().where(*due).values(closed=True))
        if self.retention is not None:
            ledger = self.current(projection, "contrib")
            ctx.conn.execute(ledger.delete().where(ledger.c.event_time < limit - self.retention))
        ctx.cache.pop(self._next_close_key, None)
        for row, seen in zip(closing, announced, strict=True):
            if not seen:
                self._announce(projection, ctx, row)

    def _announce(self, projection: Projection, ctx: StreamContext, row: Mapping[str, Any]) -> None:
        """Run ``on_close`` for a row that has just closed."""
        if self.on_close is None:
            return
        shown = {k: v for k, v in row.items() if k not in ("state", "announced")}
        shown["closed"] = True
        self.on_close(shown, CloseContext(ctx.conn, self._effect_id(row), projection))

    def _effect_id(self, row: Mapping[str, Any]) -> uuid.UUID:
        """What ``on_close`` effects are keyed by: a window's start and key, a session's id
        (its start moves when a late event extends it)."""
        if self.session:
            return uuid.uuid5(_SESSION_IDS, dumps([self.name, row["session_id"]]))
        return uuid.uuid5(
            _SESSION_IDS,
            dumps([self.name, utc(row["window_start"]), [row[k] for k in self.key]]),
        )


def windowed_tables(projection: type[StreamProjection]) -> list[Windowed]:
    """The windowed declarations of a projection class."""
    return [s for s in projection._streams.values() if isinstance(s, Windowed)]
