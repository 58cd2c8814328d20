"""Payments: one payment per confirmed shop order.

::

    REQUESTED --receive--> RECEIVED
        |
        +------void------> VOIDED        (never after it was received)

``OrderPayment.public_events`` names the events other services may depend on (the catalogue
publishes their schemas; changing one needs a new ``class_version`` and an upcaster).
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from enum import Enum
from typing import ClassVar
from uuid import UUID

from framework.domain import Aggregate, event
from framework.errors import DomainError

__all__ = [
    "PAYMENT_NAMESPACE",
    "OrderPayment",
    "PaymentAlreadyReceived",
    "PaymentError",
    "PaymentNotOpen",
    "PaymentStatus",
    "payment_id_for",
]

PAYMENT_NAMESPACE = uuid.UUID("0b7f2d0e-4a59-4c43-8f0b-6b1f3d9a2e77")


def payment_id_for(order_id: UUID) -> UUID:
    """The payment of a shop order has an id derived from the order's (one per order)."""
    return uuid.uuid5(PAYMENT_NAMESPACE, str(order_id))


class PaymentStatus(Enum):
    REQUESTED = "requested"
    RECEIVED = "received"
    VOIDED = "voided"


class PaymentError(DomainError):
    """A payments rule refused a command."""


class PaymentNotOpen(PaymentError):
    """Only a requested (open) payment can be received or voided."""


class PaymentAlreadyReceived(PaymentError):
    """A received payment cannot be voided (refund it instead)."""


class OrderPayment(Aggregate):
    """The payment a shop order is waiting for."""

    public_events: ClassVar[tuple[str, ...]] = ("Requested", "Received", "Voided")

    order_id: UUID
    amount: Decimal
    status: PaymentStatus

    @event("Requested")
    def __init__(self, id: UUID, order_id: UUID, amount: Decimal) -> None:
        self.order_id = order_id
        self.amount = amount
        self.status = PaymentStatus.REQUESTED

    def receive(self, reference: str) -> None:
        if self.status is not PaymentStatus.REQUESTED:
            raise PaymentNotOpen(f"payment {self.id} is {self.status.value}: nothing to receive")
        self._received(self.order_id, self.amount, reference)

    def void(self, reason: str) -> None:
        if self.status is PaymentStatus.RECEIVED:
            raise PaymentAlreadyReceived(f"payment {self.id} was received: refund it instead")
        if self.status is PaymentStatus.VOIDED:
            raise PaymentNotOpen(f"payment {self.id} was voided already")
        self._voided(self.order_id, reason)

    @event("Received")
    def _received(self, order_id: UUID, amount: Decimal, reference: str) -> None:
        self.status = PaymentStatus.RECEIVED

    @event("Voided")
    def _voided(self, order_id: UUID, reason: str) -> None:
        self.status = PaymentStatus.VOIDED
