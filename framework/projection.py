"""Projections: read models built from events, in SQLAlchemy tables.

A projection names itself, declares its tables in a ``MetaData`` and handles event types::

    import sqlalchemy as sa
    from framework.projection import Projection, handles

    class OrderSummary(Projection):
        name = "order_summary"
        version = 1                       # raise it when the handlers change: then rebuild
        metadata = sa.MetaData()
        orders = sa.Table(
            "orders", metadata,
            sa.Column("id", sa.Uuid, primary_key=True),
            sa.Column("status", sa.String(20), nullable=False),
        )

        @handles(Order.Placed)
        def placed(self, event: Order.Placed, conn: sa.Connection) -> None:
            conn.execute(self.orders.insert().values(id=event.originator_id, status="open"))

        @handles(Order.Confirmed)
        def confirmed(self, event: Order.Confirmed, conn: sa.Connection) -> None:
            conn.execute(self.orders.update().where(self.orders.c.id == event.originator_id)
                         .values(status="confirmed"))

Run it with :class:`framework.worker.ProjectionWorker` (or ``python -m framework.worker run
module:OrderSummary``). Rules of the road:

- **Reach your tables through ``self``** (``self.orders``), never a module-level name: a rebuild
  runs the same handlers against shadow copies of the tables and swaps them in when done.
- A handler gets the decoded event and a SQLAlchemy ``Connection`` inside the worker's
  transaction; add a third parameter named ``envelope`` to also get the
  :class:`~framework.codec.EventEnvelope` (metadata: user, correlation id; and the position).
  Never commit or roll back yourself.
- Handlers must be deterministic functions of the event and the rows (no clocks, no calls to
  other services): a rebuild must produce the same rows. Use ``event.timestamp`` for times.
- Events the projection does not handle cost nothing: the worker compares the recorded type name
  with the handled ones before decoding anything.
- **The fast path**: ``@handles(A, B, batch=True)`` hands the method a list of events (each run
  of consecutive events it handles in one transaction) so it can fold them per row and write
  with a few set-based statements (:func:`upsert_many`, :func:`update_many`); a batch handler
  that takes a parameter named ``envelopes`` also gets their envelopes.
- Money: :class:`ExactNumeric` columns, not ``sa.Numeric`` (SQLite keeps that as a float).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import conv

from framework.codec import EventEnvelope
from framework.domain import DomainEvent, event_types
from framework.errors import ConfigurationError

if TYPE_CHECKING:
    from framework.persistence import RecordedEvent

__all__ = [
    "SHADOW_SUFFIX",
    "ExactNumeric",
    "Projection",
    "handles",
    "update_many",
    "upsert",
    "upsert_many",
]

F = TypeVar("F", bound=Callable[..., None])

SHADOW_SUFFIX = "__rebuild"
"""Appended to table names (and to the projection name in the framework's tables) while a
rebuild fills shadow copies."""

_HANDLES = "__keel_handles__"
_BATCH = "__keel_batch__"


def handles(*event_classes: type[DomainEvent], batch: bool = False) -> Callable[[F], F]:
    """Mark a projection method as the handler of ``event_classes``.

    With ``batch=True`` the method takes a list of events instead of one: every run of
    consecutive events it handles within one transaction (up to ``batch_size``, in log order,
    of any of its types, several per aggregate), so it can turn N events into a few
    set-based statements (:func:`upsert_many`, ``conn.execute(stmt, [rows...])``)."""
    if not event_classes:
        raise ConfigurationError("@handles needs at least one event class")

    def mark(method: F) -> F:
        setattr(method, _HANDLES, (*getattr(method, _HANDLES, ()), *event_classes))
        if batch:
            setattr(method, _BATCH, True)
        return method

    return mark


class Projection:
    """Base class of projections: subclass it, set ``name``, ``version`` and ``metadata``,
    declare ``sa.Table`` attributes in that metadata and ``@handles`` methods.

    The handled types may also be given as a mapping, ``handlers = {Order.Placed:
    "placed"}`` (event class -> method name), for code that prefers no decorators.
    """

    name: ClassVar[str] = ""
    """Unique and stable: it keys the stored positions and is the consumer group id."""
    version: ClassVar[int] = 1
    """Raise it when the handlers change meaning; the read model must then be rebuilt."""
    metadata: ClassVar[sa.MetaData]
    """The ``MetaData`` holding this projection's tables (Alembic's target)."""
    handlers: ClassVar[Mapping[type[DomainEvent], str]] = {}

    _handler_names: ClassVar[dict[type[DomainEvent], str]]
    _table_attrs: ClassVar[dict[str, str]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found: dict[type[DomainEvent], str] = {}
        tables: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                for event_class in getattr(value, _HANDLES, ()):
                    found[event_class] = attr
                if isinstance(value, sa.Table):
                    tables[attr] = value.name
            for event_class, method in getattr(klass, "handlers", {}).items():
                found[event_class] = method
        cls._handler_names = found
        cls._table_attrs = tables
        if "metadata" not in vars(cls) and tables and not hasattr(cls, "metadata"):
            cls.metadata = next(v for v in vars(cls).values() if isinstance(v, sa.Table)).metadata

    def __init__(self) -> None:
        if not self.name:
            raise ConfigurationError(f"{type(self).__name__} needs a `name`")
        if not self._handler_names:
            raise ConfigurationError(f"{type(self).__name__} handles no event: use @handles")
        self.is_shadow = False
        self._topics: dict[str, Callable[..., None]] | None = None
        self._wants_envelope: dict[str, bool] = {}
        self._batch_topics: set[str] = set()

    # -- what the worker needs ------------------------------------------------------------------

    @property
    def tables(self) -> list[sa.Table]:
        """This projection's tables (the shadow copies, for a rebuild's instance)."""
        return [getattr(self, attr) for attr in self._table_attrs]

    @property
    def key(self) -> str:
        """The name the framework's tables know this instance by (``name__rebuild`` for a
        rebuild's shadow)."""
        return self.name + SHADOW_SUFFIX if self.is_shadow else self.name

    def handled_topics(self) -> dict[str, Callable[..., None]]:
        """Recorded type name (aliases included) -> bound handler."""
        if self._topics is None:
            topics: dict[str, Callable[..., None]] = {}
            for event_class, method_name in self._handler_names.items():
                method = getattr(self, method_name)
                owner = event_types.owner_of(event_class)
                names = [event_types.name_of(event_class)]
                names += [f"{owner.type_name}.{a}" for a in getattr(event_class, "aliases", ())]
                params = inspect.signature(method).parameters
                batch = getattr(method, _BATCH, False)
                for topic in names:
                    topics[topic] = method
                    self._wants_envelope[topic] = ("envelopes" if batch else "envelope") in params
                    if batch:
                        self._batch_topics.add(topic)
            self._topics = topics
        return self._topics

    def batch_topics(self) -> set[str]:
        """The recorded type names whose handler takes a batch (``@handles(..., batch=True)``)."""
        self.handled_topics()
        return self._batch_topics

    def apply(self, envelope: EventEnvelope, conn: Connection) -> None:
        """Run the handler of ``envelope``'s event (the worker calls this)."""
        topic = envelope.recorded.topic
        if topic in self.batch_topics():
            self.apply_batch([envelope], conn)
            return
        handler = self.handled_topics()[topic]
        if self._wants_envelope[topic]:
            handler(envelope.event, conn, envelope=envelope)
        else:
            handler(envelope.event, conn)

    def apply_batch(self, envelopes: Sequence[EventEnvelope], conn: Connection) -> None:
        """Run one batch handler over ``envelopes`` (events it handles, in log order)."""
        topic = envelopes[0].recorded.topic
        handler = self.handled_topics()[topic]
        events = [e.event for e in envelopes]
        if self._wants_envelope[topic]:
            handler(events, conn, envelopes=list(envelopes))
        else:
            handler(events, conn)

    def parked(self, conn: Connection, event: RecordedEvent, error: BaseException) -> None:
        """Called in the transaction that parks ``event`` as a dead letter after its handler
        failed every attempt (a hook for counters; nothing by default)."""

    def shadow(self, *, rename_constraints: bool = False) -> Projection:
        """A copy whose table attributes point at shadow tables (``<table>__rebuild``) in a
        metadata of their own; a rebuild fills them, then swaps them in. Named indexes (and,
        with ``rename_constraints``, named constraints: PostgreSQL wants them unique in the
        schema) get the suffix too."""
        twin = copy.copy(self)
        twin.is_shadow = True
        twin._topics = None
        twin._wants_envelope = {}
        twin._batch_topics = set()
        tables = self.tables
        convention = tables[0].metadata.naming_convention if tables else None
        shadow_metadata = sa.MetaData(naming_convention=convention)
        for attr, table in zip(self._table_attrs, tables, strict=True):
            shadow = table.to_metadata(shadow_metadata, name=table.name + SHADOW_SUFFIX)
            named: list[Any] = [i for i in shadow.indexes if isinstance(i.name, str)]
            if rename_constraints:
                named += [c for c in shadow.constraints if isinstance(c.name, str)]
            for item in named:
                item.name = conv(item.name + SHADOW_SUFFIX)
            setattr(twin, attr, shadow)
        return twin

    def create_tables(self, conn: Connection) -> None:
        """Create this projection's tables when missing (tests; Alembic in production)."""
        self.tables[0].metadata.create_all(conn, tables=self.tables)

    def drop_tables(self, conn: Connection) -> None:
        """Drop this projection's tables when present."""
        self.tables[0].metadata.drop_all(conn, tables=self.tables)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key!r} v{self.version}>"


class ExactNumeric(sa.types.TypeDecorator[Decimal]):
    """A decimal column (money) whose values round-trip exactly on every supported database.

    ``sa.Numeric`` is exact on PostgreSQL, but SQLite has no decimal type: it keeps such values
    as 8-byte floats, so ``9999999999999999.99`` comes back as ``10000000000000000.00`` and sums
    drift. ``ExactNumeric(12, 2)`` is ``NUMERIC(12, 2)`` on PostgreSQL and, on SQLite, a 64-bit
    integer counting units of ``10**-scale`` (cents), so comparisons, ``+``, ``-`` and ``SUM``
    in SQL stay exact there too. Values come back as ``Decimal`` with ``scale`` places; a value
    with more places, or more than ``precision`` digits, is refused (a clear handler error, not
    a silent rounding). Multiply or divide in Python, not in SQL (on SQLite the column holds
    the scaled integer). ``precision`` is at most 18 (what a 64-bit integer holds).
    """

    impl = sa.Numeric
    cache_ok = True

    def __init__(self, precision: int = 18, scale: int = 2) -> None:
        if not 0 <= scale <= precision <= 18:
            raise ConfigurationError(
                f"ExactNumeric({precision}, {scale}): need 0 <= scale <= precision <= 18"
            )
        super().__init__(precision=precision, scale=scale, asdecimal=True)
        self.precision = precision
        self.scale = scale
        self._quantum = Decimal(1).scaleb(-scale)
        self._limit = Decimal(10) ** (precision - scale)

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.BigInteger())
        return dialect.type_descriptor(sa.Numeric(self.precision, self.scale, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, float):
            raise TypeError(f"ExactNumeric takes Decimal, int or str, not the float {value!r}")
        exact = Decimal(value)
        fitted = exact.quantize(self._quantum)
        if fitted != exact or abs(fitted) >= self._limit:
            raise ValueError(
                f"{value!r} does not fit ExactNumeric({self.precision}, {self.scale}) "
                "without rounding; round it in the handler, or widen the column"
            )
        if dialect.name == "sqlite":
            return int(fitted.scaleb(self.scale))
        return fitted

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return Decimal(int(value)).scaleb(-self.scale).quantize(self._quantum)
        return Decimal(value).quantize(self._quantum)


def projections_in(objects: Iterable[Any]) -> list[type[Projection]]:
    """The Projection subclasses among ``objects`` (a module's ``vars()`` values)."""
    return [
        o
        for o in objects
        if isinstance(o, type) and issubclass(o, Projection) and o is not Projection and o.name
    ]


def upsert(
    conn: Connection,
    table: sa.Table,
    values: Mapping[str, Any],
    *,
    key: Sequence[str] | None = None,
    update: Mapping[str, Any] | None = None,
) -> None:
    """Insert a row, or update it when its ``key`` (default: the primary key) exists.

    ``update`` gives the columns to set on conflict (default: every non-key value); values may
    be SQL expressions, e.g. ``{"count": table.c.count + 1}``. Works on SQLite and PostgreSQL.
    """
    key = list(key or [c.name for c in table.primary_key.columns])
    changes = (
        dict(update) if update is not None else {k: v for k, v in values.items() if k not in key}
    )
    dialect = conn.dialect.name
    if dialect in ("postgresql", "sqlite"):
        # Both dialects spell INSERT ... ON CONFLICT the same way.
        from sqlalchemy.dialects import postgresql, sqlite

        statement: postgresql.Insert | sqlite.Insert = (
            postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
        ).values(**values)
        conn.execute(
            statement.on_conflict_do_update(index_elements=key, set_=changes)
            if changes
            else statement.on_conflict_do_nothing(index_elements=key)
        )
        return
    where = [table.c[k] == values[k] for k in key]
    if not changes or conn.execute(table.update().where(*where).values(**changes)).rowcount == 0:
        conn.execute(table.insert().values(**values))


def _distinct_keys(rows: Sequence[Mapping[str, Any]], key: Sequence[str], what: str) -> None:
    seen = {tuple(row[k] for k in key) for row in rows}
    if len(seen) != len(rows):
        raise ValueError(
            f"{what} got the same {'/'.join(key)} twice in one call: fold the batch's events "
            "into one row per key first"
        )


def upsert_many(
    conn: Connection,
    table: sa.Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    key: Sequence[str] | None = None,
    add: Sequence[str] = (),
    update: Sequence[str] | None = None,
) -> None:
    """:func:`upsert` for many rows in one statement (an ``executemany``): the set-based form
    batch handlers use. The rows have the same columns and distinct keys (fold a batch's
    events into one row per key first).

    On conflict, each column in ``add`` gets the row's value added to the stored one (counters,
    sums: ``add=["orders", "revenue"]``) and the columns in ``update`` (default: every other
    non-key column) are replaced; a new key is inserted as given. Works on SQLite and
    PostgreSQL (elsewhere, one :func:`upsert` per row)."""
    if not rows:
        return
    key = list(key or [c.name for c in table.primary_key.columns])
    _distinct_keys(rows, key, "upsert_many")
    columns = list(rows[0])
    replace = [c for c in columns if c not in key and c not in add] if update is None else update
    dialect = conn.dialect.name
    if dialect not in ("postgresql", "sqlite"):
        for row in rows:
            changes: dict[str, Any] = {c: row[c] for c in replace}
            changes.update({c: table.c[c] + row[c] for c in add})
            upsert(conn, table, row, key=key, update=changes)
        return
    from sqlalchemy.dialects import postgresql, sqlite

    statement: postgresql.Insert | sqlite.Insert = (
        postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    )
    excluded = statement.excluded
    set_: dict[str, Any] = {c: excluded[c] for c in replace}
    set_.update({c: table.c[c] + excluded[c] for c in add})
    conn.execute(
        statement.on_conflict_do_update(index_elements=key, set_=set_)
        if set_
        else statement.on_conflict_do_nothing(index_elements=key),
        list(rows),
    )


def update_many(
    conn: Connection,
    table: sa.Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    key: Sequence[str] | None = None,
) -> None:
    """Update many rows, each given as its key columns plus the columns to set, in one
    ``executemany`` per set of columns (rows that set the same columns share a statement).
    Keys must be distinct; a key with no row is left alone, as a plain ``UPDATE`` would."""
    if not rows:
        return
    key = list(key or [c.name for c in table.primary_key.columns])
    _distinct_keys(rows, key, "update_many")
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        columns = tuple(sorted(c for c in row if c not in key))
        # Bind names must differ from column names in an UPDATE's SET and WHERE.
        groups.setdefault(columns, []).append({f"p_{c}": v for c, v in row.items()})
    for columns, params in groups.items():
        if not columns:
            continue
        statement = (
            table.update()
            .where(*[table.c[k] == sa.bindparam(f"p_{k}", type_=table.c[k].type) for k in key])
            .values({c: sa.bindparam(f"p_{c}", type_=table.c[c].type) for c in columns})
        )
        conn.execute(statement, params)


if __name__ == "__main__":  # python -m framework.projection run module:Projection ...
    from framework.worker import main

    raise SystemExit(main())
