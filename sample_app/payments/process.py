"""The payment process: a confirmed shop order is paid, then shipped, or cancelled.

::

    Order.Confirmed  --> RequestPayment (payments), deadline "payment_due"
    OrderPayment.Received --> ShipOrder (shop), completed
    "payment_due"    --> CancelOrder (shop) + VoidPayment (payments), completed
    Order.Cancelled  --> VoidPayment (payments), completed      (the customer cancelled first)

One instance per shop order. Inputs come from two services' topics (the shop's and the
payments service's own); commands go to each service's command path.
"""

from __future__ import annotations

import os
from datetime import timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from framework.process import Context, ProcessManager, ProcessState, deadline, reacts
from sample_app.payments.commands import RequestPayment, VoidPayment
from sample_app.payments.domain import OrderPayment, payment_id_for
from sample_app.shop.commands import CancelOrder, ShipOrder
from sample_app.shop.domain import Order

__all__ = ["PaymentProcess", "PaymentState", "payment_window"]


def payment_window() -> timedelta:
    """How long a confirmed order waits for its payment (``KEEL_PAYMENT_WINDOW_SECONDS``,
    default 30 minutes)."""
    return timedelta(seconds=float(os.environ.get("KEEL_PAYMENT_WINDOW_SECONDS", 1800)))


class PaymentState(ProcessState):
    order_id: UUID | None = None
    payment_id: UUID | None = None
    amount: Decimal = Decimal("0")
    stage: str = "new"


class PaymentProcess(ProcessManager):
    name = "payment_process"
    state_type = PaymentState
    correlate = {
        Order.Confirmed: lambda e: e.originator_id,
        Order.Cancelled: lambda e: e.originator_id,
        OrderPayment.Received: lambda e: e.order_id,
        OrderPayment.Voided: lambda e: e.order_id,
    }
    starts = (Order.Confirmed,)

    def __init__(self, window: timedelta | None = None) -> None:
        super().__init__()
        self.window = window or payment_window()

    @reacts(Order.Confirmed)
    def confirmed(self, state: PaymentState, event: Any, ctx: Context) -> PaymentState:
        payment_id = payment_id_for(event.originator_id)
        ctx.send(
            RequestPayment(payment_id=payment_id, order_id=event.originator_id, amount=event.total)
        )
        ctx.schedule("payment_due", after=self.window)
        return state.evolve(
            order_id=event.originator_id,
            payment_id=payment_id,
            amount=event.total,
            stage="awaiting payment",
        )

    @reacts(OrderPayment.Received)
    def paid(self, state: PaymentState, event: Any, ctx: Context) -> PaymentState:
        ctx.cancel("payment_due")
        ctx.send(ShipOrder(order_id=event.order_id))
        ctx.complete()
        return state.evolve(stage="paid, shipping")

    @reacts(Order.Cancelled)
    def cancelled(self, state: PaymentState, event: Any, ctx: Context) -> PaymentState:
        ctx.send(
            VoidPayment(payment_id=payment_id_for(event.originator_id), reason="order cancelled")
        )
        ctx.complete()
        return state.evolve(stage="cancelled by the shop")

    @deadline("payment_due")
    def overdue(self, state: PaymentState, ctx: Context) -> PaymentState:
        # The payment decides the race with a late payment: it is either voided (then the order
        # is cancelled, below) or already received (the void is refused and paid() ships).
        assert state.payment_id is not None
        ctx.send(VoidPayment(payment_id=state.payment_id, reason="payment window passed"))
        return state.evolve(stage="voiding: no payment")

    @reacts(OrderPayment.Voided)
    def voided(self, state: PaymentState, event: Any, ctx: Context) -> PaymentState:
        ctx.send(
            CancelOrder(
                order_id=event.order_id,
                reason="payment failed",
                note="no payment within the payment window",
            )
        )
        ctx.complete()
        return state.evolve(stage="cancelled: no payment")
