"""The payments service's interval join: orders confirmed (payment requested) but not paid within
30 minutes of event time, decided once, at close, in any interleaving of the partitions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from framework.streaming.testing import given_partitions
from framework.testing import ev
from projections.payments import PAYMENT_DUE, UnpaidOrdersProjection
from sample_app.payments.domain import OrderPayment, payment_id_for

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def _requested(order: uuid.UUID, at: datetime) -> object:
    return ev(
        OrderPayment.Requested,
        id=payment_id_for(order),
        timestamp=at,
        order_id=order,
        amount=Decimal("12.50"),
    )


def _received(order: uuid.UUID, at: datetime) -> object:
    return ev(
        OrderPayment.Received,
        id=payment_id_for(order),
        timestamp=at,
        order_id=order,
        amount=Decimal("12.50"),
        reference="bank-1",
    )


def test_an_order_not_paid_within_30_minutes_is_unpaid_once_its_interval_closes() -> None:
    on_time, late, never, open_ = (uuid.UUID(int=n) for n in range(1, 5))
    partitions = given_partitions(
        {
            0: [
                _requested(on_time, T0),
                _received(on_time, T0 + timedelta(minutes=12)),
                _requested(late, T0 + timedelta(minutes=1)),
                _received(late, T0 + timedelta(minutes=45)),
            ],
            1: [
                _requested(never, T0 + timedelta(minutes=2)),
                _requested(open_, T0 + timedelta(minutes=50)),
            ],
        }
    ).tick(None, T0 + timedelta(minutes=60))
    outcome = partitions.project(UnpaidOrdersProjection)
    rows = {r["order_id"]: r["status"] for r in outcome.rows(UnpaidOrdersProjection.unpaid)}
    # open_ was requested 10 minutes before the last tick: its interval is still open.
    assert rows == {on_time: "matched", late: "unmatched", never: "unmatched"}
    assert timedelta(minutes=30) == PAYMENT_DUE
    report = partitions.all_interleavings(UnpaidOrdersProjection, examples=20)
    print(report)
    assert report.differing == 0 and report.examples == 20
