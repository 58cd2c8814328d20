"""Given events, then these rows: tests for projections.

::

    from framework.projection_testing import given_events

    def test_a_cart_counts_its_items():
        (given_events(CartSummary(), opened, item_added)      # domain events, or ev(...) specs
            .then_rows(CartSummary.carts, [{"id": CART, "items": 2, "status": "open"}]))

    def test_through_commands():
        given_commands(CartSummary(), cart_app, OpenCart(...), AddItem(...)).then_rows(...)

Events are appended to a fresh in-memory store and applied by the real worker to a fresh
in-memory SQLite database. Then, automatically, every event is delivered a second time (a
redelivery must change nothing) and the read model is rebuilt into shadow tables, which must
hold the same rows (a handler that reads the clock or other outside state fails here).
``then_rows`` compares only the columns you name, rows in primary-key order, with a readable
diff.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import pprint
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Self
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from framework.application import Application
from framework.codec import codec
from framework.commands import Command, Metadata
from framework.database import create_engine, read_only
from framework.domain import Aggregate, DomainEvent
from framework.persistence import EventStore, NewEvent, open_store
from framework.projection import Projection
from framework.rebuild import rebuild
from framework.worker import ProjectionWorker, setup_tables

__all__ = ["ProjectionOutcome", "digest", "given_commands", "given_events", "table_rows"]


def _canonical(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f") if value == value else "NaN"
    if isinstance(value, UUID | datetime | date):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return value


def _order(table: sa.Table) -> list[sa.Column[Any]]:
    return list(table.primary_key.columns) or list(table.columns)


def table_rows(conn: Connection | Engine, table: sa.Table) -> list[dict[str, Any]]:
    """Every row of ``table`` as a dict, in primary-key order."""
    if isinstance(conn, Engine):
        with conn.connect() as c, read_only(c).begin():
            return table_rows(c, table)
    query = sa.select(table).order_by(*_order(table))
    return [dict(row._mapping) for row in conn.execute(query)]


def digest(conn: Connection | Engine, tables: Sequence[sa.Table]) -> str:
    """sha256 over the canonical ``SELECT ... ORDER BY pk`` of each table, in the given
    order (only the contents count, so a shadow table digests like its live twin)."""
    if isinstance(conn, Engine):
        with conn.connect() as c, read_only(c).begin():
            return digest(c, tables)
    h = hashlib.sha256()
    for table in tables:
        h.update(b"\x00table\x00")
        for row in table_rows(conn, table):
            values = [_canonical(row[c.name]) for c in table.columns]
            h.update(json.dumps(values, default=str, separators=(",", ":")).encode())
            h.update(b"\n")
    return h.hexdigest()


class ProjectionOutcome:
    """The read model after the given events; assert on it with ``then_rows``."""

    def __init__(self, projection: Projection, engine: Engine, store: EventStore) -> None:
        self.projection = projection
        self.engine = engine
        self.store = store

    def rows(self, table: sa.Table) -> list[dict[str, Any]]:
        """Every row of ``table`` (a projection table; its current, possibly rebuilt, copy)."""
        return table_rows(self.engine, table)

    def then_rows(
        self, table: sa.Table, expected: Iterable[dict[str, Any]], *, columns: Sequence[str] = ()
    ) -> Self:
        """``table`` holds exactly these rows (in primary-key order), comparing only the
        columns the expected rows name (or ``columns``)."""
        expected = list(expected)
        names = list(columns) or sorted({k for row in expected for k in row})
        unknown = [n for n in names if n not in table.c]
        if unknown:
            raise AssertionError(f"{table.name} has no column(s) {unknown}")
        actual = [{n: row[n] for n in names} for row in self.rows(table)]
        wanted = [{n: row.get(n) for n in names} for row in expected]
        if _pretty(actual) != _pretty(wanted):
            raise AssertionError(
                f"the rows of {table.name} differ:\n"
                + "\n".join(
                    difflib.unified_diff(
                        _pretty(wanted), _pretty(actual), "expected", "actual", lineterm=""
                    )
                )
            )
        return self

    def then_empty(self, table: sa.Table) -> Self:
        return self.then_rows(table, [])

    def digest(self) -> str:
        return digest(self.engine, self.projection.tables)


def _pretty(rows: list[dict[str, Any]]) -> list[str]:
    return pprint.pformat(
        [{k: _canonical(v) for k, v in row.items()} for row in rows], width=100
    ).splitlines()


def _test_engine() -> Engine:
    return create_engine("sqlite://", poolclass=StaticPool)


def _encode(items: Iterable[Any]) -> list[NewEvent]:
    """Domain events, aggregates (their pending events) or ``ev(...)`` specs -> new events."""
    from framework.testing import EventSpec, _instantiate

    versions: dict[UUID, int] = {}
    encoded: list[NewEvent] = []
    for item in items:
        if isinstance(item, Aggregate):
            events: list[Any] = list(item.collect_events())
        elif isinstance(item, EventSpec):
            if item.id is None:
                raise TypeError(f"give ev({item.cls.__qualname__}, id=...) an aggregate id")
            version = versions.get(item.id, 0) + 1
            events = [_instantiate(item, item.id, version)]
        elif isinstance(item, DomainEvent):
            events = [item]
        else:
            raise TypeError(f"not an event, aggregate or ev(...) spec: {item!r}")
        for event in events:
            versions[event.originator_id] = event.originator_version
            encoded.append(codec.encode(event, Metadata()))
    return encoded


def _run(projection: Projection, store: EventStore, check: bool) -> ProjectionOutcome:
    engine = _test_engine()
    setup_tables(engine, projection)
    worker = ProjectionWorker(projection, store, engine, batch_size=7, max_attempts=1)
    worker.run(until_caught_up=True)
    outcome = ProjectionOutcome(projection, engine, store)
    if check:
        _check_redelivery(worker, outcome)
        _check_rebuild(outcome)
    return outcome


def _check_redelivery(worker: ProjectionWorker, outcome: ProjectionOutcome) -> None:
    before = outcome.digest()
    for partition in range(outcome.store.partitions):
        events = list(outcome.store.iter_partition(partition))
        worker.applier.load([partition])
        worker.applier.apply_partition(partition, events)
    if outcome.digest() != before:
        raise AssertionError(
            f"{outcome.projection.name}: delivering the same events again changed the read "
            "model; positions must make redelivery a no-op"
        )


def _check_rebuild(outcome: ProjectionOutcome) -> None:
    projection, engine = outcome.projection, outcome.engine
    rebuild(projection, outcome.store, engine, swap=False, progress=lambda _p: None)
    shadow = projection.shadow()
    for live, twin in zip(projection.tables, shadow.tables, strict=True):
        live_rows, twin_rows = table_rows(engine, live), table_rows(engine, twin)
        if live_rows != twin_rows:
            raise AssertionError(
                f"{projection.name}: rebuilding {live.name} from the same events gave other "
                "rows (does a handler read the clock, random numbers or outside state?):\n"
                + "\n".join(
                    difflib.unified_diff(
                        _pretty(live_rows), _pretty(twin_rows), "live", "rebuilt", lineterm=""
                    )
                )
            )
    with engine.begin() as conn:
        shadow.drop_tables(conn)


def given_events(
    projection: Projection, *events: Any, check_redelivery: bool = True
) -> ProjectionOutcome:
    """Apply these events (domain events, aggregates with pending events, or ``ev(Class,
    id=..., **fields)`` specs) to a fresh read model."""
    store = open_store("memory://", name="test")
    encoded = _encode(events)
    if encoded:
        store.append(encoded)
    return _run(projection, store, check_redelivery)


def given_commands(
    projection: Projection,
    app: Application | Callable[[EventStore], Application],
    *commands: Command,
    check_redelivery: bool = True,
) -> ProjectionOutcome:
    """Execute these commands through ``app`` (an Application, or a factory taking a store) on
    a fresh in-memory store, then project the events they wrote."""
    store = open_store("memory://", name="test")
    application = app.using(store) if isinstance(app, Application) else app(store)
    for command in commands:
        application.execute(command)
    return _run(projection, store, check_redelivery)
