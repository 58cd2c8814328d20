"""Batch handlers (``@handles(..., batch=True)``): runs of events in one call, set-based
statements, the same rows as per-event handlers, and poison events still found one by one."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from framework import dead_letters
from framework.codec import EventEnvelope
from framework.database import create_engine
from framework.persistence import open_store
from framework.projection import ExactNumeric, Projection, handles, update_many, upsert_many
from framework.projection_testing import digest, given_events
from framework.testing import ev
from framework.worker import ProjectionWorker, setup_tables
from tests.projection_domain import Cart, cart_app
from tests.support.projection_support import Traffic

pytestmark = pytest.mark.timeout(60)


def _table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "cart_totals",
        metadata,
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("customer", sa.String(100), nullable=False),
        sa.Column("n_items", sa.Integer, nullable=False),
        sa.Column("total", ExactNumeric(12, 2), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
    )


class PerEvent(Projection):
    """The reference: one statement per event."""

    name = "cart_totals_per_event"
    metadata = sa.MetaData()
    totals = _table(metadata)

    @handles(Cart.Opened)
    def opened(self, event: Any, conn: Connection) -> None:
        conn.execute(
            self.totals.insert().values(
                id=event.originator_id, customer=event.customer, n_items=0, total=0, status="open"
            )
        )

    @handles(Cart.ItemAdded)
    def added(self, event: Any, conn: Connection) -> None:
        t = self.totals
        conn.execute(
            t.update()
            .where(t.c.id == event.originator_id)
            .values(
                n_items=t.c.n_items + event.quantity, total=t.c.total + event.price * event.quantity
            )
        )

    @handles(Cart.CheckedOut)
    def checked_out(self, event: Any, conn: Connection) -> None:
        t = self.totals
        conn.execute(t.update().where(t.c.id == event.originator_id).values(status="done"))


class Batched(Projection):
    """The same rows from a batch handler: events folded per cart, then two statements."""

    name = "cart_totals_batched"
    metadata = sa.MetaData()
    totals = _table(metadata)
    runs: ClassVar[list[int]] = []
    fail_skus: ClassVar[set[str]] = set()

    @handles(Cart.Opened, Cart.ItemAdded, Cart.CheckedOut, batch=True)
    def changed(
        self, events: Sequence[Any], conn: Connection, envelopes: Sequence[EventEnvelope]
    ) -> None:
        assert [e.event for e in envelopes] == list(events)
        self.runs.append(len(events))
        added: dict[uuid.UUID, dict[str, Any]] = {}  # counters to add to stored rows
        status: dict[uuid.UUID, str] = {}
        for event in events:
            cart = event.originator_id
            if isinstance(event, Cart.Opened):
                added[cart] = {"id": cart, "customer": event.customer, "n_items": 0, "total": 0,
                               "status": "open"}  # fmt: skip
            elif isinstance(event, Cart.ItemAdded):
                if event.sku in self.fail_skus:
                    raise ValueError(f"cannot project {event.sku}")
                row = added.setdefault(
                    cart, {"id": cart, "customer": "", "n_items": 0, "total": 0, "status": ""}
                )
                row["n_items"] += event.quantity
                row["total"] += event.price * event.quantity
            else:
                status[cart] = "done"
        # New carts are inserted whole; known carts only get their counters added.
        upsert_many(conn, self.totals, list(added.values()), add=["n_items", "total"], update=[])
        update_many(conn, self.totals, [{"id": c, "status": s} for c, s in status.items()])


@pytest.fixture
def carts() -> Iterator[Any]:
    store = open_store("memory://", name="carts")
    Traffic(cart_app(store), seed=21).run(400)
    yield store
    store.close()


def project(projection: Projection, store: Any, url: str, **settings: Any) -> sa.Engine:
    engine = create_engine(url)
    setup_tables(engine, projection)
    ProjectionWorker(projection, store, engine, **settings).run(until_caught_up=True)
    return engine


def test_a_batch_handler_builds_the_same_rows_in_runs(carts: Any, tmp_path: Path) -> None:
    Batched.runs.clear()
    reference = project(PerEvent(), carts, f"sqlite:///{tmp_path}/a.db")
    batched = project(Batched(), carts, f"sqlite:///{tmp_path}/b.db", batch_size=100)
    assert digest(reference, PerEvent().tables) == digest(batched, Batched().tables)
    # Command records sit between the events and do not break a run: with 100 records per
    # transaction a run holds about 50 events.
    assert max(Batched.runs) >= 40 and sum(Batched.runs) == 400
    reference.dispose()
    batched.dispose()


def test_given_events_checks_a_batch_projection_too() -> None:
    cart = uuid.uuid4()
    given_events(
        Batched(),
        ev(Cart.Opened, id=cart, customer="ann"),
        ev(Cart.ItemAdded, id=cart, sku="a", quantity=2, price=Decimal("1.25")),
        ev(Cart.CheckedOut, id=cart),
    ).then_rows(
        Batched.totals,
        [{"id": cart, "customer": "ann", "n_items": 2, "total": Decimal("2.50"), "status": "done"}],
    )


def test_a_poison_event_in_a_batch_is_found_and_parked_alone(
    carts: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = cart_app(carts)
    from tests.projection_domain import AddItem, OpenCart

    bad = uuid.uuid4()
    app.execute(OpenCart(cart_id=bad, customer="bad"))
    app.execute(AddItem(cart_id=bad, sku="POISON"))
    app.execute(AddItem(cart_id=bad, sku="later"))  # held behind it
    Traffic(app, seed=22).run(50)
    monkeypatch.setattr(Batched, "fail_skus", {"POISON"})
    settings = {"max_attempts": 2, "retry_initial": 0.001, "retry_max": 0.002}
    engine = project(Batched(), carts, f"sqlite:///{tmp_path}/b.db", **settings)
    letters = dead_letters.list_dead_letters(engine, Batched())
    assert sorted((d.reason, d.version) for d in letters) == [("failed", 2), ("held", 3)]
    monkeypatch.setattr(Batched, "fail_skus", set())
    assert dead_letters.redrive(engine, Batched()).remaining == 0
    reference = project(PerEvent(), carts, f"sqlite:///{tmp_path}/a.db")
    assert digest(reference, PerEvent().tables) == digest(engine, Batched().tables)
    engine.dispose()
    reference.dispose()


def test_set_based_helpers_refuse_a_key_twice() -> None:
    engine = create_engine("sqlite://")
    table = Batched.totals
    with engine.begin() as conn:
        Batched.metadata.create_all(conn)
        row = {"id": uuid.uuid4(), "customer": "a", "n_items": 1, "total": 1, "status": "open"}
        with pytest.raises(ValueError, match="fold the batch"):
            upsert_many(conn, table, [row, row])
        with pytest.raises(ValueError, match="fold the batch"):
            update_many(conn, table, [{"id": row["id"], "n_items": 1}] * 2)
