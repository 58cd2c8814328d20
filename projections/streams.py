"""The shop's read models as stream declarations (:mod:`framework.streaming`).

=========================  =====================================================================
``shop_sales_hourly``      a tumbling window: confirmed orders, revenue and cancellations per
                           hour of confirmation (the declarative twin of ``projections.sales``)
``shop_sales_daily``       sales per country per calendar day in Europe/Zurich (23- and 25-hour
                           days when the clocks change)
``shop_orders_joined``     orders enriched with their customer (the declarative twin of
                           ``projections.orders``): a foreign-key join against a customer lookup
``shop_shopping_sessions`` a session window: a customer's orders placed less than 30 minutes
                           apart form one shopping session
``shop_unshipped_orders``  an interval join: confirmed orders not shipped within 24 hours (a
                           trigger for a reminder), written once the 24 hours are over
=========================  =====================================================================

The golden test (``tests/unit/test_streaming_sample.py``) checks the twins give the same rows
as the hand-written projections on the same events.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from framework.streaming import (
    Calendar,
    Count,
    IntervalJoin,
    Join,
    Lookup,
    Retractions,
    Session,
    StreamProjection,
    Sum,
    Tumbling,
    Windowed,
)
from sample_app.shop.domain import Customer, Order, OrderStatus

metadata = sa.MetaData()


def _lines(lines: list[Any]) -> list[dict[str, Any]]:
    return [
        {"product": x.product, "quantity": x.quantity, "unit_price": str(x.unit_price)}
        for x in lines
    ]


def _totals(lines: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "lines": lines,
        "line_count": len(lines),
        "item_count": sum(x["quantity"] for x in lines),
        "total": sum((Decimal(x["unit_price"]) * x["quantity"] for x in lines), Decimal("0")),
    }


def _stamp(event: Any, **values: Any) -> dict[str, Any]:
    return {"updated_at": event.timestamp, "version": event.originator_version, **values}


def _placed(e: Any) -> dict[str, Any]:
    return _stamp(
        e,
        customer_id=e.customer_id,
        status=OrderStatus.OPEN.value,
        gift_wrap=e.gift_wrap,
        requested_delivery=e.requested_delivery,
        placed_at=e.timestamp,
        **_totals(_lines(e.lines)),
    )


def _line_added(e: Any, row: dict[str, Any]) -> dict[str, Any]:
    return _stamp(e, **_totals([*row["lines"], *_lines([e.line])]))


def _line_removed(e: Any, row: dict[str, Any]) -> dict[str, Any]:
    return _stamp(e, **_totals([x for x in row["lines"] if x["product"] != e.product]))


def _confirmed(e: Any) -> dict[str, Any]:
    return _stamp(
        e,
        status=OrderStatus.CONFIRMED.value,
        confirmed_at=e.timestamp,
        ship_city=e.ship_to.city,
        ship_country=e.ship_to.country,
    )


def _shipped(e: Any) -> dict[str, Any]:
    return _stamp(
        e,
        status=OrderStatus.SHIPPED.value,
        shipped_at=e.timestamp,
        carrier=e.carrier.value,
        tracking_number=e.tracking_number,
    )


def _cancelled(e: Any) -> dict[str, Any]:
    return _stamp(e, status=OrderStatus.CANCELLED.value, cancelled_at=e.timestamp)


def _ship_to_or_customer(ship: str, home: str) -> Any:
    # From confirmation on an order shows where it goes; before, where its customer lives.
    def pick(left: dict[str, Any], right: dict[str, Any] | None) -> Any:
        if left.get(ship) is not None:
            return left[ship]
        return None if right is None else right[home]

    return pick


def _order_total(e: Any) -> Decimal:
    return Decimal(e.total)


class ShopStreams(StreamProjection):
    name = "shop_streams"
    version = 1
    metadata = metadata

    sales_hourly = Windowed(
        "shop_sales_hourly",
        metadata,
        window=Tumbling(hours=1),
        aggregates={
            "orders": Count(),
            "revenue": Sum(_order_total, type=sa.Numeric(16, 2)),
            "cancelled": Retractions(),
        },
        contributes=Order.Confirmed,
        retracts=Order.Cancelled,
        contribution_id=lambda e: e.originator_id,
    )
    sales_daily = Windowed(
        "shop_sales_daily",
        metadata,
        window=Calendar(days=1, tz="Europe/Zurich"),
        key={"country": (sa.String(2), lambda e: e.ship_to.country)},
        aggregates={
            "orders": Count(),
            "revenue": Sum(_order_total, type=sa.Numeric(16, 2)),
            "cancelled": Retractions(),
        },
        contributes=Order.Confirmed,
        retracts=Order.Cancelled,
        contribution_id=lambda e: e.originator_id,
    )
    sessions = Windowed(
        "shop_shopping_sessions",
        metadata,
        window=Session(gap=timedelta(minutes=30)),
        key={"customer_id": (sa.Uuid(), lambda e: e.customer_id)},
        aggregates={"orders": Count()},
        contributes=Order.Placed,
        contribution_id=lambda e: e.originator_id,
    )

    customers = Lookup(
        "shop_streams_customers",
        metadata,
        key=("customer_id", sa.Uuid()),
        columns={"name": sa.String(100), "city": sa.String(100), "country": sa.String(2)},
        fed_by={
            Customer.Registered: lambda e: {
                "name": e.name,
                "city": e.address.city,
                "country": e.address.country,
            },
            Customer.AddressChanged: lambda e: {
                "city": e.address.city,
                "country": e.address.country,
            },
        },
    )
    orders = Join(
        "shop_orders_joined",
        metadata,
        key=("order_id", sa.Uuid()),
        columns={
            "customer_id": sa.Uuid(),
            "status": sa.String(20),
            "line_count": sa.Integer(),
            "item_count": sa.Integer(),
            "total": sa.Numeric(14, 2),
            "lines": sa.JSON(),
            "gift_wrap": sa.Boolean(),
            "requested_delivery": sa.Date(),
            "carrier": sa.String(20),
            "tracking_number": sa.String(40),
            "placed_at": sa.DateTime(timezone=True),
            "confirmed_at": sa.DateTime(timezone=True),
            "shipped_at": sa.DateTime(timezone=True),
            "cancelled_at": sa.DateTime(timezone=True),
            "updated_at": sa.DateTime(timezone=True),
            "version": sa.Integer(),
            "ship_city": sa.String(100),
            "ship_country": sa.String(2),
        },
        fed_by={
            Order.Placed: _placed,
            Order.LineAdded: _line_added,
            Order.LineRemoved: _line_removed,
            Order.Confirmed: _confirmed,
            Order.Shipped: _shipped,
            Order.Cancelled: _cancelled,
        },
        right=customers,
        fk="customer_id",
        enrich={
            "customer_name": ("name", sa.String(100)),
            "customer_city": (_ship_to_or_customer("ship_city", "city"), sa.String(100)),
            "customer_country": (_ship_to_or_customer("ship_country", "country"), sa.String(2)),
        },
    )
    unshipped = IntervalJoin(
        "shop_unshipped_orders",
        metadata,
        left=Order.Confirmed,
        right=Order.Shipped,
        key=("order_id", sa.Uuid(), lambda e: e.originator_id),
        within=timedelta(hours=24),
    )
