"""The shop's application service: one handler per command.

Django builds it lazily from ``settings.KEEL["APPLICATION"] = "sample_app.shop.application:build"``
with the configured event store; tests call ``build()`` for a fresh in-memory shop.
"""

from __future__ import annotations

from typing import Any

from framework.application import Application, UnitOfWork
from framework.persistence import EventStore
from sample_app.shop.commands import (
    AddOrderLine,
    CancelOrder,
    ChangeCustomerAddress,
    ConfirmOrder,
    DeactivateCustomer,
    PlaceOrder,
    RegisterCustomer,
    RemoveOrderLine,
    ShipOrder,
)
from sample_app.shop.domain import Customer, Order

__all__ = ["NAME", "build"]

NAME = "shop"
"""The application's name: it names the event store's tables (or Kafka topic)."""


def build(store: str | EventStore = "memory://", **options: Any) -> Application:
    """The shop on ``store`` (a URL for :func:`framework.persistence.open_store`, or a store)."""
    app = Application(NAME, store, **options)

    @app.handles(RegisterCustomer)
    def register_customer(command: RegisterCustomer, uow: UnitOfWork) -> None:
        uow.add(
            Customer(
                id=command.customer_id,
                name=command.name,
                email=command.email,
                address=command.address,
            )
        )

    @app.handles(ChangeCustomerAddress)
    def change_address(command: ChangeCustomerAddress, uow: UnitOfWork) -> None:
        uow.get(Customer, command.customer_id).change_address(command.address)

    @app.handles(DeactivateCustomer)
    def deactivate_customer(command: DeactivateCustomer, uow: UnitOfWork) -> None:
        uow.get(Customer, command.customer_id).deactivate(command.reason)

    @app.handles(PlaceOrder)
    def place_order(command: PlaceOrder, uow: UnitOfWork) -> None:
        customer = uow.get(Customer, command.customer_id)
        uow.add(
            Order.place(
                command.order_id,
                customer,
                command.lines,
                requested_delivery=command.requested_delivery,
                gift_wrap=command.gift_wrap,
            )
        )

    @app.handles(AddOrderLine)
    def add_line(command: AddOrderLine, uow: UnitOfWork) -> None:
        uow.get(Order, command.order_id).add_line(command.line)

    @app.handles(RemoveOrderLine)
    def remove_line(command: RemoveOrderLine, uow: UnitOfWork) -> None:
        uow.get(Order, command.order_id).remove_line(command.product)

    @app.handles(ConfirmOrder)
    def confirm(command: ConfirmOrder, uow: UnitOfWork) -> None:
        order = uow.get(Order, command.order_id)
        order.confirm(ship_to=uow.get(Customer, order.customer_id).address)

    @app.handles(ShipOrder)
    def ship(command: ShipOrder, uow: UnitOfWork) -> None:
        uow.get(Order, command.order_id).ship(command.carrier, command.tracking_number)

    @app.handles(CancelOrder)
    def cancel(command: CancelOrder, uow: UnitOfWork) -> None:
        uow.get(Order, command.order_id).cancel(command.reason, command.note)

    return app
