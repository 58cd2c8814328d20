"""Sales per hour and per country per day: windowed tables declared with framework.streaming.

**An order counts in the window of its confirmation**, with the total it was confirmed at:
placing an order is only an intent, and lines can still change until confirmation, while a
confirmed order's total is fixed. Cancelling a confirmed order retracts it from the window it
was counted in (the contribution ledger remembers which), so a window's figures may go down
later: it is the revenue that stood. Orders cancelled before confirmation never count.

=========================  =====================================================================
``shop_sales_per_hour``    a tumbling window of one hour (UTC): orders, revenue, cancellations
``shop_sales_daily``       per country (the ship-to address) per calendar day in Europe/Zurich,
                           so the days the clocks change have 23 and 25 hours
=========================  =====================================================================

Both windows take the ``Confirmed`` event's own time, never when a worker applied it, so any
interleaving of the partitions and every rebuild give the same rows. Each row also says how
many contributions it holds, its revision, late events and whether the window has closed.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from framework.streaming import (
    Aggregate,
    Calendar,
    Count,
    Retractions,
    StreamProjection,
    Sum,
    Tumbling,
    Windowed,
)
from sample_app.shop.domain import Order

metadata = sa.MetaData()

ZONE = "Europe/Zurich"


def _order_total(e: Any) -> Decimal:
    return Decimal(e.total)


def _sales() -> dict[str, Aggregate]:
    return {
        "orders": Count(),
        "revenue": Sum(_order_total, type=sa.Numeric(16, 2)),
        "cancelled": Retractions(),
    }


def _confirmed_orders(name: str, **window: Any) -> Windowed:
    return Windowed(
        name,
        metadata,
        aggregates=_sales(),
        contributes=Order.Confirmed,
        retracts=Order.Cancelled,
        contribution_id=lambda e: e.originator_id,
        **window,
    )


class SalesPerHourProjection(StreamProjection):
    name = "sales_per_hour"
    version = 2  # 1 was the hand-written window (shop_sales_per_hour by ``hour``)
    metadata = metadata

    hourly = _confirmed_orders("shop_sales_per_hour", window=Tumbling(hours=1))
    daily = _confirmed_orders(
        "shop_sales_daily",
        window=Calendar(days=1, tz=ZONE),
        key={"country": (sa.String(2), lambda e: e.ship_to.country)},
    )


sales_per_hour = SalesPerHourProjection.hourly.table
sales_daily = SalesPerHourProjection.daily.table
