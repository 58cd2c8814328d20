"""The payments service's read models.

- ``payments_payments`` (projection ``payments``, over the payments service's own events).
- ``payments_unpaid_orders`` (projection ``unpaid_orders``, a stream projection over the payments
  service's events): the interval join "confirmed but not paid within 30 minutes". A payment is
  requested when the shop confirms an order, so each row is an order's request joined to its
  payment: ``matched`` when it arrived within 30 minutes of event time, ``unmatched`` once the 30
  minutes are over without one (written once, at close, never by the wall clock).
- ``payments_orders`` (projection ``payment_orders``, over the **shop's** events topic, read as
  a consumer only): the orders the payments service knows about. A payments service deployed
  for the first time builds it by replaying the shop's topic from offset 0 (or from "now", see
  :func:`framework.process.start_at_head`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from framework.projection import ExactNumeric, Projection, handles, upsert
from framework.streaming import IntervalJoin, StreamProjection
from sample_app.payments.domain import OrderPayment
from sample_app.shop.domain import Order

__all__ = ["PaymentOrdersProjection", "PaymentsProjection", "UnpaidOrdersProjection"]

PAYMENT_DUE = timedelta(minutes=30)
"""How long after confirmation an order's payment counts as on time (event time)."""

metadata = sa.MetaData()

payments = sa.Table(
    "payments_payments",
    metadata,
    sa.Column("payment_id", sa.Uuid, primary_key=True),
    sa.Column("order_id", sa.Uuid, nullable=False, index=True),
    sa.Column("amount", ExactNumeric(14, 2), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("reference", sa.String(80), nullable=True),
    sa.Column("reason", sa.String(200), nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

orders = sa.Table(
    "payments_orders",
    metadata,
    sa.Column("order_id", sa.Uuid, primary_key=True),
    sa.Column("total", ExactNumeric(14, 2), nullable=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


class PaymentsProjection(Projection):
    """One row per payment."""

    name = "payments"
    version = 1
    metadata = metadata
    payments = payments

    @handles(OrderPayment.Requested)
    def requested(self, event: Any, conn: Connection) -> None:
        conn.execute(
            self.payments.insert().values(
                payment_id=event.originator_id,
                order_id=event.order_id,
                amount=event.amount,
                status="requested",
                updated_at=event.timestamp,
            )
        )

    @handles(OrderPayment.Received)
    def received(self, event: Any, conn: Connection) -> None:
        self._set(conn, event, status="received", reference=event.reference)

    @handles(OrderPayment.Voided)
    def voided(self, event: Any, conn: Connection) -> None:
        self._set(conn, event, status="voided", reason=event.reason)

    def _set(self, conn: Connection, event: Any, **values: Any) -> None:
        t = self.payments
        conn.execute(
            t.update()
            .where(t.c.payment_id == event.originator_id)
            .values(updated_at=event.timestamp, **values)
        )


class PaymentOrdersProjection(Projection):
    """The shop's orders as the payments service sees them (confirmed, shipped, cancelled)."""

    name = "payment_orders"
    version = 1
    metadata = metadata
    orders = orders

    @handles(Order.Confirmed)
    def confirmed(self, event: Any, conn: Connection) -> None:
        upsert(
            conn,
            self.orders,
            {
                "order_id": event.originator_id,
                "total": event.total,
                "status": "confirmed",
                "updated_at": event.timestamp,
            },
        )

    @handles(Order.Shipped)
    def shipped(self, event: Any, conn: Connection) -> None:
        self._set(conn, event, "shipped")

    @handles(Order.Cancelled)
    def cancelled(self, event: Any, conn: Connection) -> None:
        self._set(conn, event, "cancelled")

    def _set(self, conn: Connection, event: Any, status: str) -> None:
        upsert(
            conn,
            self.orders,
            {"order_id": event.originator_id, "status": status, "updated_at": event.timestamp},
            update={"status": status, "updated_at": event.timestamp},
        )


stream_metadata = sa.MetaData()


class UnpaidOrdersProjection(StreamProjection):
    """Orders confirmed but not paid within :data:`PAYMENT_DUE` (the interval join)."""

    name = "unpaid_orders"
    version = 1
    metadata = stream_metadata

    unpaid = IntervalJoin(
        "payments_unpaid_orders",
        stream_metadata,
        left=OrderPayment.Requested,
        right=OrderPayment.Received,
        key=("order_id", sa.Uuid(), lambda e: e.order_id),
        within=PAYMENT_DUE,
    )
