"""Orders enriched with their customer's name and address: a foreign-key join, declared.

A customer lookup (``shop_order_customers``), fed by customer events, is joined onto the order
rows (``shop_orders``) that order events feed:

- An order placed for a customer shows that customer's name, city and country.
- **An address change updates the customer's orders that were never confirmed** (the open ones,
  and those cancelled while open, which never got a ship-to address). From confirmation on an
  order shows the ship-to address recorded in its ``Confirmed`` event: where it actually goes.
- Customer and order events may sit in different partitions (Kafka keys events by aggregate id),
  so a worker can see an order before its customer. The row is then written without the
  customer data and filled in when the customer's events arrive. Either way round, the final
  rows are the same: a rebuild gives an identical table.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from framework.streaming import Join, Lookup, StreamProjection
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


class OrdersProjection(StreamProjection):
    name = "orders"
    version = 2  # 1 was the hand-written join
    metadata = metadata

    customers = Lookup(
        "shop_order_customers",
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
    joined = Join(
        "shop_orders",
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
        indexes=(
            sa.Index("ix_shop_orders_status", "status"),
            sa.Index("ix_shop_orders_placed_at", "placed_at"),
        ),
    )


orders = OrdersProjection.joined.table
order_customers = OrdersProjection.customers.table
