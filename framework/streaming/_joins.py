"""Joins: lookup tables fed by events, foreign-key and as-of joins, and the interval join.

- :class:`Lookup`: reference state per key (a customer's name and country), fed by events,
  optionally ``versioned`` (each change kept with the event time it became valid from).
- :class:`Join`: a table of left rows fed by events (orders) and enriched from a lookup through a
  foreign key. ``mode="latest"`` (a foreign-key join): when the right side changes, the left
  rows pointing at it are projected again; a missing right side gives NULLs and fills in when
  it arrives. ``mode="as_of"``: each left row takes the right version valid at its own time
  column, and a version that arrives late (valid from before, recorded after) corrects the rows
  it applies to. Either way a row is a function of the final left row and the right side, so
  any order of left and right events gives the same table.
- The interval join is :mod:`framework.streaming._interval`.

State is in the shared SQL database, so no co-partitioning is needed: the two sides may come
from topics with different partition counts.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from framework.codec import EventEnvelope
from framework.domain import DomainEvent
from framework.errors import ConfigurationError
from framework.projection import Projection, upsert
from framework.streaming._projection import Stream, StreamContext
from framework.streaming._values import dumps, loads, utc

__all__ = ["Join", "Lookup"]

Feed = Callable[..., Mapping[str, Any]]


def _feeds(fed_by: Mapping[type[DomainEvent], Feed]) -> dict[type[Any], tuple[Feed, bool]]:
    """event class -> (function, takes the current row too)."""
    out: dict[type[Any], tuple[Feed, bool]] = {}
    for cls, fn in fed_by.items():
        try:
            arity = len(inspect.signature(fn).parameters)
        except (TypeError, ValueError):
            arity = 1
        out[cls] = (fn, arity >= 2)
    return out


def _originator(event: Any) -> Any:
    return event.originator_id


class Lookup(Stream):
    """Reference state per key, fed by events::

        customers = Lookup(
            "shop_customers_ref", metadata,
            key=("customer_id", sa.Uuid),
            columns={"name": sa.String(100), "country": sa.String(2)},
            fed_by={Customer.Registered: lambda e: {"name": e.name, "country": e.address.country},
                    Customer.AddressChanged: lambda e: {"country": e.address.country}},
        )

    A feeding function returns the columns it changes (the others keep their values); the key
    comes from ``key_of`` (default: the event's aggregate id). With ``versioned=True`` each
    change is kept from its event time (``valid_from``) on, for as-of joins. The events of one
    key must come from one aggregate (one partition), as a customer's do.
    """

    def __init__(
        self,
        name: str,
        metadata: sa.MetaData,
        *,
        key: tuple[str, sa.types.TypeEngine[Any]],
        columns: Mapping[str, sa.types.TypeEngine[Any]],
        fed_by: Mapping[type[DomainEvent], Feed],
        key_of: Callable[[Any], Any] = _originator,
        versioned: bool = False,
        time: Callable[[Any], datetime] | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.key_name, key_type = key
        self.columns = dict(columns)
        self.feeds = _feeds(fed_by)
        self.key_of = key_of
        self.versioned = versioned
        self.time = time
        self.dependents: list[Join] = []
        cols: list[Any] = [sa.Column(self.key_name, key_type, primary_key=True)]
        if versioned:
            cols += [
                sa.Column("valid_from", sa.DateTime(timezone=True), primary_key=True),
                sa.Column("changes", sa.Text, nullable=False),
            ]
        cols += [sa.Column(c, t, nullable=True) for c, t in self.columns.items()]
        self.tables = {"rows": sa.Table(name, metadata, *cols)}

    def events(self) -> set[type[DomainEvent]]:
        return set(self.feeds)

    def apply(
        self, projection: Projection, ctx: StreamContext, event: Any, envelope: EventEnvelope
    ) -> None:
        fn, wants_row = self.feeds[type(event)]
        key = self.key_of(event)
        table = self.current(projection, "rows")
        kc = table.c[self.key_name]
        if not self.versioned:
            row = None
            if wants_row:
                found = ctx.conn.execute(sa.select(table).where(kc == key)).first()
                row = None if found is None else dict(found._mapping)
            changes = dict(fn(event, row) if wants_row else fn(event))
            upsert(ctx.conn, table, {self.key_name: key, **changes}, update=changes or None)
        else:
            moment = utc(self.time(event) if self.time else type(projection).event_time(event))  # type: ignore[attr-defined]
            changes = dict(fn(event, None) if wants_row else fn(event))
            self._insert_version(ctx, table, key, moment, changes)
        for join in self.dependents:
            join.refresh_right(projection, ctx, key)

    def _insert_version(
        self,
        ctx: StreamContext,
        table: sa.Table,
        key: Any,
        moment: datetime,
        changes: Mapping[str, Any],
    ) -> None:
        kc = table.c[self.key_name]
        upsert(
            ctx.conn,
            table,
            {self.key_name: key, "valid_from": moment, "changes": dumps(dict(changes))},
            update={"changes": dumps(dict(changes))},
        )
        # Fold the changes in time order: a version recorded late corrects the later ones.
        state: dict[str, Any] = dict.fromkeys(self.columns)
        versions = ctx.conn.execute(
            sa.select(table.c.valid_from, table.c.changes).where(kc == key)
        ).all()
        for valid_from, stored in sorted(versions, key=lambda v: utc(v[0])):
            state.update(loads(stored))
            ctx.conn.execute(
                table.update().where(kc == key, table.c.valid_from == valid_from).values(state)
            )

    def value(
        self, projection: Projection, conn: sa.Connection, key: Any, at: datetime | None
    ) -> dict[str, Any] | None:
        """The right row of ``key`` (for a versioned lookup: the version valid at ``at``;
        ``at=None``: the latest)."""
        if key is None:
            return None
        table = self.current(projection, "rows")
        query = sa.select(table).where(table.c[self.key_name] == key)
        if self.versioned:
            if at is not None:
                query = query.where(table.c.valid_from <= at)
            query = query.order_by(table.c.valid_from.desc()).limit(1)
        found = conn.execute(query).first()
        return None if found is None else dict(found._mapping)


class Join(Stream):
    """Left rows fed by events, enriched from a :class:`Lookup` through a foreign key::

        orders = Join(
            "shop_orders_enriched", metadata,
            key=("order_id", sa.Uuid),
            columns={"customer_id": sa.Uuid, "status": sa.String(20), ...},
            fed_by={Order.Placed: lambda e: {...}, Order.Confirmed: lambda e, row: {...}},
            right=customers, fk="customer_id",
            enrich={"customer_name": ("name", sa.String(100)),
                    "customer_city": (lambda left, right: ..., sa.String(100))},
            mode="latest",              # or "as_of" with as_of="confirmed_at"
        )

    ``enrich`` maps a column to a right column name, or to ``f(left_row, right_row_or_None)``.
    """

    def __init__(
        self,
        name: str,
        metadata: sa.MetaData,
        *,
        key: tuple[str, sa.types.TypeEngine[Any]],
        columns: Mapping[str, sa.types.TypeEngine[Any]],
        fed_by: Mapping[type[DomainEvent], Feed],
        right: Lookup,
        fk: str,
        enrich: Mapping[str, tuple[str | Callable[..., Any], sa.types.TypeEngine[Any]]],
        mode: str = "latest",
        as_of: str | None = None,
        key_of: Callable[[Any], Any] = _originator,
        indexes: tuple[sa.Index, ...] = (),
    ) -> None:
        super().__init__()
        if mode not in ("latest", "as_of"):
            raise ConfigurationError(f"{name}: mode= must be 'latest' or 'as_of'")
        if mode == "as_of" and (not right.versioned or as_of is None):
            raise ConfigurationError(
                f"{name}: an as-of join needs a versioned=True lookup and as_of=<time column>"
            )
        if fk not in columns:
            raise ConfigurationError(f"{name}: the foreign key {fk!r} must be one of columns")
        self.name = name
        self.key_name = key[0]
        self.columns = dict(columns)
        self.feeds = _feeds(fed_by)
        self.right = right
        self.fk = fk
        self.enrich = {c: spec for c, (spec, _type) in enrich.items()}
        self.mode = mode
        self.as_of = as_of
        self.key_of = key_of
        right.dependents.append(self)
        cols: list[Any] = [sa.Column(key[0], key[1], primary_key=True)]
        cols += [sa.Column(c, t, nullable=True) for c, t in self.columns.items()]
        cols += [sa.Column(c, t, nullable=True) for c, (_s, t) in enrich.items()]
        self.tables = {
            "rows": sa.Table(name, metadata, *cols, sa.Index(f"ix_{name}_{fk}", fk), *indexes)
        }

    def events(self) -> set[type[DomainEvent]]:
        return set(self.feeds)

    def apply(
        self, projection: Projection, ctx: StreamContext, event: Any, envelope: EventEnvelope
    ) -> None:
        fn, wants_row = self.feeds[type(event)]
        key = self.key_of(event)
        table = self.current(projection, "rows")
        found = ctx.conn.execute(sa.select(table).where(table.c[self.key_name] == key)).first()
        row = None if found is None else dict(found._mapping)
        changes = dict(fn(event, row) if wants_row else fn(event))
        merged = {**dict.fromkeys(self.columns), **(row or {}), **changes, self.key_name: key}
        merged.update(self._enriched(projection, ctx.conn, merged))
        if row is None:
            ctx.conn.execute(table.insert().values(merged))
        else:
            ctx.conn.execute(table.update().where(table.c[self.key_name] == key).values(merged))

    def _enriched(
        self, projection: Projection, conn: sa.Connection, left: Mapping[str, Any]
    ) -> dict[str, Any]:
        at = None
        if self.mode == "as_of" and left.get(self.as_of or "") is not None:
            at = utc(left[self.as_of or ""])
        right = self.right.value(projection, conn, left.get(self.fk), at)
        out: dict[str, Any] = {}
        for column, spec in self.enrich.items():
            if callable(spec):
                out[column] = spec(left, right)
            else:
                out[column] = None if right is None else right.get(spec)
        return out

    def refresh_right(self, projection: Projection, ctx: StreamContext, key: Any) -> None:
        """The right side of ``key`` changed: project its dependent left rows again."""
        table = self.current(projection, "rows")
        rows = ctx.conn.execute(sa.select(table).where(table.c[self.fk] == key)).all()
        for found in rows:
            left = dict(found._mapping)
            enriched = self._enriched(projection, ctx.conn, left)
            if any(left[c] != v for c, v in enriched.items()):
                ctx.conn.execute(
                    table.update()
                    .where(table.c[self.key_name] == left[self.key_name])
                    .values(enriched)
                )
