"""Customers: one row per customer, as the shop sees them now."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from framework.projection import Projection, handles
from sample_app.shop.domain import Customer, CustomerStatus

metadata = sa.MetaData()

customers = sa.Table(
    "shop_customers",
    metadata,
    sa.Column("customer_id", sa.Uuid, primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("email", sa.String(254), nullable=False),
    sa.Column("street", sa.String(200), nullable=False),
    sa.Column("city", sa.String(100), nullable=False),
    sa.Column("postcode", sa.String(20), nullable=False),
    sa.Column("country", sa.String(2), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Index("ix_shop_customers_country", "country"),
    sa.Index("ix_shop_customers_name", "name"),
)


class CustomersProjection(Projection):
    name = "customers"
    version = 1
    metadata = metadata
    customers = customers

    @handles(Customer.Registered)
    def registered(self, event: Customer.Registered, conn: Connection) -> None:
        address = event.address
        conn.execute(
            self.customers.insert().values(
                customer_id=event.originator_id,
                name=event.name,
                email=event.email,
                street=address.street,
                city=address.city,
                postcode=address.postcode,
                country=address.country,
                status=CustomerStatus.ACTIVE.value,
                registered_at=event.timestamp,
                updated_at=event.timestamp,
                version=event.originator_version,
            )
        )

    @handles(Customer.AddressChanged)
    def address_changed(self, event: Customer.AddressChanged, conn: Connection) -> None:
        address = event.address
        self._update(
            conn,
            event,
            street=address.street,
            city=address.city,
            postcode=address.postcode,
            country=address.country,
        )

    @handles(Customer.Deactivated)
    def deactivated(self, event: Customer.Deactivated, conn: Connection) -> None:
        self._update(conn, event, status=CustomerStatus.DEACTIVATED.value)

    def _update(self, conn: Connection, event: Customer.Event, **values: object) -> None:
        table = self.customers
        conn.execute(
            table.update()
            .where(table.c.customer_id == event.originator_id)
            .values(updated_at=event.timestamp, version=event.originator_version, **values)
        )
