"""The shop's hand-written projections, as they were before ``projections.sales`` and
``projections.orders`` became stream declarations: the golden reference the declarations must
equal on the same events (``tests/unit/test_streaming_sample.py``). Not used by the sample."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from framework.projection import Projection, handles, upsert
from projections.orders import _lines, _totals  # the line arithmetic, not the join
from sample_app.shop.domain import Customer, Order, OrderStatus

# -- sales per hour: a tumbling window by hand ----------------------------------------------------

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


class HandSalesPerHourProjection(Projection):
    name = "hand_sales_per_hour"
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


# -- orders with their customer: a stream-table join by hand ------------------------------------

orders_metadata = sa.MetaData()


orders = sa.Table(
    "shop_orders",
    orders_metadata,
    sa.Column("order_id", sa.Uuid, primary_key=True),
    sa.Column("customer_id", sa.Uuid, nullable=False),
    sa.Column("customer_name", sa.String(100), nullable=True),
    sa.Column("customer_city", sa.String(100), nullable=True),
    sa.Column("customer_country", sa.String(2), nullable=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("line_count", sa.Integer, nullable=False),
    sa.Column("item_count", sa.Integer, nullable=False),
    sa.Column("total", sa.Numeric(14, 2), nullable=False),
    sa.Column("lines", sa.JSON, nullable=False),
    sa.Column("gift_wrap", sa.Boolean, nullable=False),
    sa.Column("requested_delivery", sa.Date, nullable=True),
    sa.Column("carrier", sa.String(20), nullable=True),
    sa.Column("tracking_number", sa.String(40), nullable=True),
    sa.Column("placed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("shipped_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Index("ix_shop_orders_customer", "customer_id"),
    sa.Index("ix_shop_orders_status", "status"),
    sa.Index("ix_shop_orders_placed_at", "placed_at"),
)

order_customers = sa.Table(
    "shop_order_customers",
    orders_metadata,
    sa.Column("customer_id", sa.Uuid, primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("city", sa.String(100), nullable=False),
    sa.Column("country", sa.String(2), nullable=False),
)


class HandOrdersProjection(Projection):
    name = "hand_orders"
    version = 1
    metadata = orders_metadata
    orders = orders
    order_customers = order_customers

    # -- the customer side of the join ------------------------------------------------------

    @handles(Customer.Registered, Customer.AddressChanged)
    def customer_changed(self, event: Any, conn: Connection) -> None:
        values: dict[str, Any] = {"city": event.address.city, "country": event.address.country}
        if hasattr(event, "name"):
            values["name"] = event.name
            upsert(conn, self.order_customers, {"customer_id": event.originator_id, **values})
        else:
            conn.execute(
                self.order_customers.update()
                .where(self.order_customers.c.customer_id == event.originator_id)
                .values(**values)
            )
        table = self.orders
        mine = table.c.customer_id == event.originator_id
        if "name" in values:  # orders seen before their customer get the name now
            conn.execute(table.update().where(mine).values(customer_name=values["name"]))
        conn.execute(
            table.update()
            .where(mine, table.c.confirmed_at.is_(None))
            .values(customer_city=values["city"], customer_country=values["country"])
        )

    # -- orders ------------------------------------------------------------------------------

    @handles(Order.Placed)
    def placed(self, event: Any, conn: Connection) -> None:
        customer = conn.execute(
            sa.select(self.order_customers).where(
                self.order_customers.c.customer_id == event.customer_id
            )
        ).first()
        conn.execute(
            self.orders.insert().values(
                order_id=event.originator_id,
                customer_id=event.customer_id,
                customer_name=customer.name if customer else None,
                customer_city=customer.city if customer else None,
                customer_country=customer.country if customer else None,
                status=OrderStatus.OPEN.value,
                gift_wrap=event.gift_wrap,
                requested_delivery=event.requested_delivery,
                placed_at=event.timestamp,
                updated_at=event.timestamp,
                version=event.originator_version,
                **_totals(_lines(event.lines)),
            )
        )

    @handles(Order.LineAdded)
    def line_added(self, event: Any, conn: Connection) -> None:
        lines = [*self._current_lines(conn, event), *_lines([event.line])]
        self._update(conn, event, **_totals(lines))

    @handles(Order.LineRemoved)
    def line_removed(self, event: Any, conn: Connection) -> None:
        lines = [x for x in self._current_lines(conn, event) if x["product"] != event.product]
        self._update(conn, event, **_totals(lines))

    @handles(Order.Confirmed)
    def confirmed(self, event: Any, conn: Connection) -> None:
        self._update(
            conn,
            event,
            status=OrderStatus.CONFIRMED.value,
            confirmed_at=event.timestamp,
            customer_city=event.ship_to.city,
            customer_country=event.ship_to.country,
        )

    @handles(Order.Shipped)
    def shipped(self, event: Any, conn: Connection) -> None:
        self._update(
            conn,
            event,
            status=OrderStatus.SHIPPED.value,
            shipped_at=event.timestamp,
            carrier=event.carrier.value,
            tracking_number=event.tracking_number,
        )

    @handles(Order.Cancelled)
    def cancelled(self, event: Any, conn: Connection) -> None:
        self._update(conn, event, status=OrderStatus.CANCELLED.value, cancelled_at=event.timestamp)

    def _current_lines(self, conn: Connection, event: Any) -> list[dict[str, Any]]:
        found = conn.execute(
            sa.select(self.orders.c.lines).where(self.orders.c.order_id == event.originator_id)
        ).scalar_one()
        return list(found)

    def _update(self, conn: Connection, event: Any, **values: Any) -> None:
        table = self.orders
        conn.execute(
            table.update()
            .where(table.c.order_id == event.originator_id)
            .values(updated_at=event.timestamp, version=event.originator_version, **values)
        )
