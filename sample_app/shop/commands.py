"""The shop's commands: what a user may ask of it, validated before any handler runs.

New aggregates get their id from the client (``customer_id``, ``order_id``), with a fresh UUID
as the default, so a retried request creates nothing twice.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal
from uuid import UUID, uuid4

from pydantic import Field, StringConstraints

from framework.commands import Command
from sample_app.shop.domain import MAX_LINES, Address, Carrier, Email, Name, OrderLine, ProductName

__all__ = [
    "AddOrderLine",
    "CancelOrder",
    "ChangeCustomerAddress",
    "ConfirmOrder",
    "DeactivateCustomer",
    "PlaceOrder",
    "RegisterCustomer",
    "RemoveOrderLine",
    "ShipOrder",
]

Note = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)]


class RegisterCustomer(Command):
    """Register a new customer."""

    customer_id: UUID = Field(default_factory=uuid4, description="The new customer's id")
    name: Name
    email: Email
    address: Address


class ChangeCustomerAddress(Command):
    """Move a customer to a new address; their open orders follow."""

    customer_id: UUID
    address: Address


class DeactivateCustomer(Command):
    """Deactivate a customer: no new orders, no address changes."""

    customer_id: UUID
    reason: Note | None = None


class PlaceOrder(Command):
    """Place an order for an active customer."""

    order_id: UUID = Field(default_factory=uuid4, description="The new order's id")
    customer_id: UUID
    lines: list[OrderLine] = Field(min_length=1, max_length=MAX_LINES)
    requested_delivery: date | None = Field(None, description="Optional wish of the customer")
    gift_wrap: bool = False


class AddOrderLine(Command):
    """Add a product to an open order."""

    order_id: UUID
    line: OrderLine


class RemoveOrderLine(Command):
    """Remove a product from an open order (never its last line)."""

    order_id: UUID
    product: ProductName


class ConfirmOrder(Command):
    """Confirm an open order; the customer's current address becomes its ship-to address."""

    order_id: UUID


class ShipOrder(Command):
    """Ship a confirmed order."""

    order_id: UUID
    carrier: Carrier = Carrier.DHL
    tracking_number: (
        Annotated[str, StringConstraints(strip_whitespace=True, max_length=40)] | None
    ) = None


class CancelOrder(Command):
    """Cancel an order that has not been shipped."""

    order_id: UUID
    reason: Literal["customer request", "out of stock", "payment failed", "other"] = (
        "customer request"
    )
    note: Note | None = None
