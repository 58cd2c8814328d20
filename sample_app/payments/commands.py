"""The payments service's commands."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated
from uuid import UUID

from pydantic import Field, StringConstraints

from framework.commands import Command

__all__ = ["ReceivePayment", "RequestPayment", "VoidPayment"]


class RequestPayment(Command):
    """Ask the customer to pay for a confirmed order."""

    payment_id: UUID
    order_id: UUID
    amount: Decimal = Field(ge=0, max_digits=14, decimal_places=2)


class ReceivePayment(Command):
    """Record that the payment provider received the money."""

    payment_id: UUID
    reference: Annotated[str, StringConstraints(strip_whitespace=True, max_length=80)] = ""


class VoidPayment(Command):
    """Withdraw a payment request that was not paid."""

    payment_id: UUID
    reason: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] = "timeout"
