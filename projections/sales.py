"""Sales per hour: a tumbling window of one hour.

**An order counts in the hour (UTC) of its confirmation**, with the total it was confirmed at:
placing an order is only an intent, and lines can still change until confirmation, while a
confirmed order's total is fixed. Cancelling a confirmed order retracts it from the hour it was
counted in (so a window's figures may go down later: it is the revenue that stood). Orders
cancelled before confirmation never count. The window's key comes from the ``Confirmed`` event's
own time, never from when a worker happened to apply it, so a rebuild gives the same rows.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from framework.projection import Projection, handles, upsert
from sample_app.shop.domain import Order

metadata = sa.MetaData()

sales_per_hour = sa.Table(
    "shop_sales_per_hour",
    metadata,
    sa.Column("hour", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("orders", sa.Integer, nullable=False),
    sa.Column("revenue", sa.Numeric(16, 2), nullable=False),
    sa.Column("cancelled", sa.Integer, nullable=False),
)

# Which window each confirmed order was counted in, to retract it on cancellation.
sales_orders = sa.Table(
    "shop_sales_orders",
    metadata,
    sa.Column("order_id", sa.Uuid, primary_key=True),
    sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
    sa.Column("total", sa.Numeric(14, 2), nullable=False),
)


def window(moment: datetime) -> datetime:
    """The start of the hour (UTC) that ``moment`` falls in."""
    moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.replace(minute=0, second=0, microsecond=0)


class SalesPerHourProjection(Projection):
    name = "sales_per_hour"
    version = 1
    metadata = metadata
    sales_per_hour = sales_per_hour
    sales_orders = sales_orders

    @handles(Order.Confirmed)
    def confirmed(self, event: Any, conn: Connection) -> None:
        hour = window(event.timestamp)
        total = Decimal(event.total)
        conn.execute(
            self.sales_orders.insert().values(order_id=event.originator_id, hour=hour, total=total)
        )
        table = self.sales_per_hour
        upsert(
            conn,
            table,
            {"hour": hour, "orders": 1, "revenue": total, "cancelled": 0},
            update={"orders": table.c.orders + 1, "revenue": table.c.revenue + total},
        )

    @handles(Order.Cancelled)
    def cancelled(self, event: Any, conn: Connection) -> None:
        counted = conn.execute(
            sa.select(self.sales_orders).where(self.sales_orders.c.order_id == event.originator_id)
        ).first()
        if counted is None:
            return  # cancelled before confirmation: it never counted
        table = self.sales_per_hour
        conn.execute(
            table.update()
            .where(table.c.hour == counted.hour)
            .values(
                orders=table.c.orders - 1,
                revenue=table.c.revenue - counted.total,
                cancelled=table.c.cancelled + 1,
            )
        )
        conn.execute(
            self.sales_orders.delete().where(self.sales_orders.c.order_id == event.originator_id)
        )
