"""The payments application service: one handler per command."""

from __future__ import annotations

from typing import Any

from framework.application import Application, UnitOfWork
from framework.persistence import EventStore
from sample_app.payments.commands import ReceivePayment, RequestPayment, VoidPayment
from sample_app.payments.domain import OrderPayment

__all__ = ["NAME", "build"]

NAME = "payments"
"""Names the event store's tables (or the Kafka topics ``payments.events``/``.commands``)."""


def build(store: str | EventStore = "memory://", **options: Any) -> Application:
    app = Application(NAME, store, **options)

    @app.handles(RequestPayment)
    def request(command: RequestPayment, uow: UnitOfWork) -> None:
        uow.add(
            OrderPayment(id=command.payment_id, order_id=command.order_id, amount=command.amount)
        )

    @app.handles(ReceivePayment)
    def receive(command: ReceivePayment, uow: UnitOfWork) -> None:
        uow.get(OrderPayment, command.payment_id).receive(command.reference)

    @app.handles(VoidPayment)
    def void(command: VoidPayment, uow: UnitOfWork) -> None:
        uow.get(OrderPayment, command.payment_id).void(command.reason)

    return app
