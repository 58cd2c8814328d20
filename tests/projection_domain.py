"""A small domain for the read-side tests: shopping carts, and a projection with three tables.

``cart_event_log`` counts how many times each event was applied (``applied``): the fault tests
read duplicates (``applied > 1``) and missing events (no row) straight from it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from decimal import Decimal
from typing import Any, ClassVar
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from framework.application import Application, UnitOfWork
from framework.codec import EventEnvelope
from framework.commands import Command
from framework.domain import Aggregate, event
from framework.persistence import EventStore
from framework.projection import ExactNumeric, Projection, handles, upsert


class Cart(Aggregate):
    customer: str
    status: str

    @event("Opened")
    def __init__(self, id: UUID, customer: str) -> None:
        self.customer = customer
        self.status = "open"

    @event("ItemAdded")
    def add(self, sku: str, quantity: int, price: Decimal) -> None:
        pass

    @event("CheckedOut")
    def check_out(self) -> None:
        self.status = "checked_out"


class OpenCart(Command):
    cart_id: UUID
    customer: str


class AddItem(Command):
    cart_id: UUID
    sku: str
    quantity: int = 1
    price: Decimal = Decimal("1.50")


class CheckOut(Command):
    cart_id: UUID


def cart_app(store: EventStore | str, name: str = "carts") -> Application:
    app = Application(name, store, snapshot_every=None)

    @app.handles(OpenCart)
    def open_cart(command: OpenCart, uow: UnitOfWork) -> None:
        uow.add(Cart(id=command.cart_id, customer=command.customer))

    @app.handles(AddItem)
    def add_item(command: AddItem, uow: UnitOfWork) -> None:
        uow.get(Cart, command.cart_id).add(command.sku, command.quantity, command.price)

    @app.handles(CheckOut)
    def check_out(command: CheckOut, uow: UnitOfWork) -> None:
        uow.get(Cart, command.cart_id).check_out()

    return app


class CartSummary(Projection):
    name = "cart_summary"
    version = 1
    metadata = sa.MetaData()
    carts = sa.Table(
        "cart_summary_carts",
        metadata,
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("customer", sa.String(100), nullable=False, index=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("item_count", sa.Integer, nullable=False),
        sa.Column("total", ExactNumeric(12, 2), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
    )
    lines = sa.Table(
        "cart_summary_lines",
        metadata,
        sa.Column("cart_id", sa.Uuid, primary_key=True),
        sa.Column("sku", sa.String(50), primary_key=True),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Index("ix_cart_summary_lines_sku", "sku"),
    )
    event_log = sa.Table(
        "cart_event_log",
        metadata,
        sa.Column("aggregate_id", sa.Uuid, primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("applied", sa.Integer, nullable=False),
    )

    delay: ClassVar[float] = float(os.environ.get("KEEL_TEST_HANDLER_DELAY", "0") or 0)
    """Seconds each handler sleeps (the kill tests slow the worker down to hit it mid-batch)."""

    fail_skus: ClassVar[set[str]] = set()
    """Items whose ItemAdded the handler refuses (a poison event, until the set is cleared)."""

    def _log(self, conn: Connection, aggregate_id: UUID, version: int) -> None:
        if self.delay:
            time.sleep(self.delay)
        t = self.event_log
        upsert(
            conn,
            t,
            {"aggregate_id": aggregate_id, "version": version, "applied": 1},
            update={"applied": t.c.applied + 1},
        )

    def _touch(self, conn: Connection, cart_id: UUID, version: int, **values: Any) -> None:
        t = self.carts
        conn.execute(t.update().where(t.c.id == cart_id).values(version=version, **values))

    @handles(Cart.Opened)
    def opened(self, event: Cart.Opened, conn: Connection) -> None:
        conn.execute(
            self.carts.insert().values(
                id=event.originator_id,
                customer=event.customer,
                status="open",
                item_count=0,
                total=Decimal(0),
                version=event.originator_version,
            )
        )
        self._log(conn, event.originator_id, event.originator_version)

    @handles(Cart.ItemAdded)
    def item_added(self, event: Any, conn: Connection, envelope: EventEnvelope) -> None:
        if event.sku in self.fail_skus:
            raise ValueError(f"cannot project item {event.sku!r}")
        c = self.carts.c
        self._touch(
            conn,
            event.originator_id,
            event.originator_version,
            item_count=c.item_count + event.quantity,
            total=c.total + event.price * event.quantity,
        )
        upsert(
            conn,
            self.lines,
            {"cart_id": event.originator_id, "sku": event.sku, "quantity": event.quantity},
            update={"quantity": self.lines.c.quantity + event.quantity},
        )
        self._log(conn, envelope.recorded.aggregate_id, envelope.recorded.version)

    @handles(Cart.CheckedOut)
    def checked_out(self, event: Cart.CheckedOut, conn: Connection) -> None:
        self._touch(conn, event.originator_id, event.originator_version, status="checked_out")
        self._log(conn, event.originator_id, event.originator_version)


def event_log(
    conn: Connection, projection: CartSummary | None = None
) -> dict[tuple[str, int], int]:
    """(aggregate id, version) -> times applied."""
    t = (projection or CartSummary()).event_log
    return {(str(a), v): n for a, v, n in conn.execute(sa.select(t))}


def store_events(store: EventStore) -> set[tuple[str, int]]:
    """Every (aggregate id, version) of a cart event in the store."""
    found = set()
    for partition in range(store.partitions):
        for e in store.iter_partition(partition):
            if e.topic.startswith("Cart."):
                found.add((str(e.aggregate_id), e.version))
    return found


def dup_and_missing(
    log: dict[tuple[str, int], int], expected: Iterable[tuple[str, int]]
) -> tuple[int, int]:
    expected = set(expected)
    dup = sum(n - 1 for n in log.values() if n > 1)
    missing = len(expected - set(log))
    return dup, missing
