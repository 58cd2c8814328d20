"""Customers: one row per customer, as the shop sees them now."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from framework.projection import Projection, handles, update_many
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
    """One row per customer. A batch handler: each run of customer events becomes one
    ``executemany`` insert for the new customers and one update per set of changed columns,
    instead of one statement per event."""

    name = "customers"
    version = 1
    metadata = metadata
    customers = customers

    @handles(Customer.Registered, Customer.AddressChanged, Customer.Deactivated, batch=True)
    def changed(self, events: Sequence[Customer.Event], conn: Connection) -> None:
        new: dict[UUID, dict[str, Any]] = {}
        changes: dict[UUID, dict[str, Any]] = {}
        for event in events:
            cid = event.originator_id
            if isinstance(event, Customer.Registered):
                new[cid] = {
                    "customer_id": cid,
                    "name": event.name,
                    "email": event.email,
                    **_address(event.address),
                    "status": CustomerStatus.ACTIVE.value,
                    "registered_at": event.timestamp,
                    "updated_at": event.timestamp,
                    "version": event.originator_version,
                }
                continue
            if isinstance(event, Customer.AddressChanged):
                values = _address(event.address)
            else:
                values = {"status": CustomerStatus.DEACTIVATED.value}
            values.update(updated_at=event.timestamp, version=event.originator_version)
            # A customer registered in this batch is inserted with its later changes.
            target = new.get(cid) or changes.setdefault(cid, {"customer_id": cid})
            target.update(values)
        if new:
            conn.execute(self.customers.insert(), list(new.values()))
        update_many(conn, self.customers, list(changes.values()))


def _address(address: Any) -> dict[str, Any]:
    return {
        "street": address.street,
        "city": address.city,
        "postcode": address.postcode,
        "country": address.country,
    }
