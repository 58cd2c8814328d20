"""The golden test: the shop's declared projections (projections.sales, projections.orders)
give the rows of the hand-written ones they replaced (tests/support/handwritten_shop.py) on the
same events, in any interleaving of the partitions; plus the daily, session and unshipped
tables."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from framework.streaming.testing import Partitions, given_partitions
from framework.testing import ev
from projections.orders import OrdersProjection
from projections.sales import SalesPerHourProjection
from projections.streams import ShopStreams
from sample_app.shop.domain import Address, Carrier, Customer, Order, OrderLine
from tests.support.handwritten_shop import HandOrdersProjection, HandSalesPerHourProjection

T0 = datetime(2026, 3, 28, 20, 0, tzinfo=UTC)  # the night Zurich moves to summer time


def _address(rng: random.Random) -> Address:
    city, country = rng.choice([("Zurich", "CH"), ("Basel", "CH"), ("Berlin", "DE")])
    return Address(street=f"{rng.randint(1, 99)} Main St", city=city, country=country)


def _history(seed: int, partitions: int = 3) -> Partitions:
    """A valid shop history: customers who register and move, orders that are placed, edited,
    confirmed, shipped or cancelled; each aggregate in one partition, in time order there."""
    rng = random.Random(seed)
    timeline: list[tuple[datetime, uuid.UUID, Any]] = []
    customers: list[tuple[uuid.UUID, Address]] = []
    for n in range(4):
        cid = uuid.UUID(int=1000 + n)
        when = T0 + timedelta(minutes=rng.uniform(0, 120))
        home = _address(rng)
        timeline.append(
            (
                when,
                cid,
                ev(
                    Customer.Registered,
                    id=cid,
                    timestamp=when,
                    name=f"C{n}",
                    email=f"c{n}@example.com",
                    address=home,
                ),
            )
        )
        if rng.random() < 0.6:
            later = when + timedelta(minutes=rng.uniform(1, 600))
            timeline.append(
                (
                    later,
                    cid,
                    ev(Customer.AddressChanged, id=cid, timestamp=later, address=_address(rng)),
                )
            )
        customers.append((cid, home))
    for n in range(14):
        oid = uuid.UUID(int=2000 + n)
        cid, home = rng.choice(customers)
        when = T0 + timedelta(minutes=rng.uniform(0, 900))
        price = Decimal(f"{rng.randint(1, 90)}.{rng.randint(0, 99):02d}")
        lines = [OrderLine(product="tea", quantity=rng.randint(1, 3), unit_price=price)]
        steps: list[Any] = [
            ev(
                Order.Placed,
                id=oid,
                customer_id=cid,
                lines=lines,
                requested_delivery=None,
                gift_wrap=rng.random() < 0.2,
            )
        ]
        if rng.random() < 0.4:
            extra = OrderLine(product="cake", quantity=1, unit_price=Decimal("4.50"))
            lines = [*lines, extra]
            steps.append(ev(Order.LineAdded, id=oid, line=extra))
        if rng.random() < 0.75:
            total = sum((x.amount for x in lines), Decimal("0"))
            steps.append(ev(Order.Confirmed, id=oid, total=total, ship_to=home))
            if rng.random() < 0.4:
                steps.append(ev(Order.Shipped, id=oid, carrier=Carrier.DHL, tracking_number="T1"))
            elif rng.random() < 0.5:
                steps.append(ev(Order.Cancelled, id=oid, reason="changed mind", note=None))
        elif rng.random() < 0.5:
            steps.append(ev(Order.Cancelled, id=oid, reason="never mind", note=None))
        for step in steps:
            step.fields["timestamp"] = when
            timeline.append((when, oid, step))
            when += timedelta(minutes=rng.uniform(1, 50 * 60))
    home_of = {}
    for _when, aggregate_id, _e in timeline:
        home_of.setdefault(aggregate_id, rng.randrange(partitions))
    sequences: dict[int, list[Any]] = {p: [] for p in range(partitions)}
    for _when, aggregate_id, item in sorted(timeline, key=lambda x: x[0]):
        sequences[home_of[aggregate_id]].append(item)
    return given_partitions(sequences).tick(None, T0 + timedelta(days=5))


def _without(rows: list[dict[str, Any]], *columns: str) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in columns} for r in rows]


def test_declared_sales_and_orders_equal_the_hand_written_ones():
    for seed in range(3):
        history = _history(seed)
        sales = history.project(SalesPerHourProjection)
        orders = history.project(OrdersProjection)
        hand_sales = history.run(HandSalesPerHourProjection, history.trickle())
        hand_orders = history.run(HandOrdersProjection, history.trickle())
        hand_hours = [
            {"window_start": r["hour"], **_without([r], "hour")[0]}
            for r in hand_sales.rows(HandSalesPerHourProjection.sales_per_hour)
        ]
        assert hand_hours, "the history confirms orders"
        sales.then_rows(SalesPerHourProjection.hourly, hand_hours)
        hand_rows = hand_orders.rows(HandOrdersProjection.orders)
        assert any(r["customer_name"] for r in hand_rows)
        orders.then_rows(OrdersProjection.joined, hand_rows)
        hand_customers = hand_orders.rows(HandOrdersProjection.order_customers)
        orders.then_rows(OrdersProjection.customers, hand_customers)


def test_the_shop_streams_are_identical_in_every_interleaving():
    for projection in (SalesPerHourProjection, OrdersProjection, ShopStreams):
        report = _history(7).all_interleavings(projection, examples=6)
        assert report.differing == 0 and report.examples == 6


def test_sales_per_country_per_zurich_day_sessions_and_unshipped_orders():
    outcome = _history(3).project(ShopStreams)
    sales = _history(3).project(SalesPerHourProjection)
    days = sales.rows(SalesPerHourProjection.daily)
    assert days and all(r["closed"] for r in days)
    lengths = {r["window_end"] - r["window_start"] for r in days}
    assert lengths <= {timedelta(hours=23), timedelta(hours=24)}
    hourly = sales.rows(SalesPerHourProjection.hourly)
    assert sum(r["orders"] for r in days) == sum(r["orders"] for r in hourly)
    sessions = outcome.rows(ShopStreams.sessions)
    orders = _history(3).project(OrdersProjection).rows(OrdersProjection.joined)
    assert sum(r["orders"] for r in sessions) == len(orders)
    unshipped = {r["order_id"]: r["status"] for r in outcome.rows(ShopStreams.unshipped)}
    for order in orders:
        if order["confirmed_at"] is None:
            assert order["order_id"] not in unshipped
        elif order["shipped_at"] is not None and order["shipped_at"] - order[
            "confirmed_at"
        ] <= timedelta(hours=24):
            assert unshipped[order["order_id"]] == "matched"
        else:
            assert unshipped[order["order_id"]] == "unmatched"
