"""Given / when / then tests of process managers (framework.process) with a fake clock,
on the sample's payment process and on small managers that exercise each policy."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import pytest

from framework.errors import ConfigurationError, ProcessError
from framework.process import Context, ProcessManager, ProcessState, deadline, reacts
from framework.process.manager import Instance, UnknownInstanceError
from framework.process.testing import given
from sample_app.payments.commands import RequestPayment, VoidPayment
from sample_app.payments.domain import OrderPayment, payment_id_for
from sample_app.payments.process import PaymentProcess
from sample_app.shop.commands import CancelOrder, ShipOrder
from sample_app.shop.domain import Address, Customer, Order, OrderLine

BERLIN = Address(street="Unter den Linden 1", city="Berlin", country="DE")
TEA = OrderLine(product="Tea", quantity=2, unit_price=Decimal("3.50"))


def order_events(*, cancel: bool = False) -> tuple[UUID, dict[str, Any]]:
    customer = Customer(id=uuid4(), name="Ada", email="ada@example.com", address=BERLIN)
    order = Order.place(uuid4(), customer, [TEA])
    order.confirm(ship_to=BERLIN)
    if cancel:
        order.cancel("customer request")
    events = {type(e).__name__: e for e in order.collect_events()}
    payment = OrderPayment(id=payment_id_for(order.id), order_id=order.id, amount=order.total)
    payment.receive("psp-1")
    events.update({f"OrderPayment.{type(e).__name__}": e for e in payment.collect_events()})
    unpaid = OrderPayment(id=payment_id_for(order.id), order_id=order.id, amount=order.total)
    unpaid.void("payment window passed")
    events["OrderPayment.Voided"] = unpaid.collect_events()[-1]
    return order.id, events


def pm() -> PaymentProcess:
    return PaymentProcess(window=timedelta(minutes=30))


def test_a_confirmed_order_requests_payment_and_schedules_the_deadline() -> None:
    order_id, e = order_events()
    (
        given(pm())
        .when(e["Confirmed"])
        .then_commands(
            RequestPayment(
                payment_id=payment_id_for(order_id), order_id=order_id, amount=Decimal("7.00")
            )
        )
        .then_deadlines(payment_due=timedelta(minutes=30))
        .then_active()
        .then_state(stage="awaiting payment", order_id=order_id)
    )


def test_no_payment_within_the_window_cancels_the_order() -> None:
    order_id, e = order_events()
    (
        given(pm(), e["Confirmed"])
        .when_time_passes(minutes=29)
        .then_no_commands()
        .when_time_passes(minutes=2)
        .then_commands(
            VoidPayment(payment_id=payment_id_for(order_id), reason="payment window passed")
        )
        .then_deadlines()
        .then_active()  # the payment decides: voided, or received after all
        .when(e["OrderPayment.Voided"])
        .then_commands(
            VoidPayment(payment_id=payment_id_for(order_id), reason="payment window passed"),
            CancelOrder(
                order_id=order_id,
                reason="payment failed",
                note="no payment within the payment window",
            ),
        )
        .then_completed()
        .then_facts(
            "Triggered",
            "CommandIssued",
            "DeadlineScheduled",
            "DeadlineReached",
            "CommandIssued",
            "Triggered",
            "CommandIssued",
            "Completed",
        )
    )


def test_a_payment_ships_the_order_and_cancels_the_deadline() -> None:
    order_id, e = order_events()
    (
        given(pm(), e["Confirmed"])
        .when(e["OrderPayment.Received"])
        .then_commands(ShipOrder(order_id=order_id))
        .then_deadlines()
        .then_completed()
        .when_time_passes(minutes=31)
        .then_commands(ShipOrder(order_id=order_id))  # nothing more: the deadline was cancelled
    )


def test_a_redelivered_event_issues_no_new_command() -> None:
    order_id, e = order_events()
    scenario = given(pm()).when(e["Confirmed"]).twice()
    scenario.then_commands(
        RequestPayment(
            payment_id=payment_id_for(order_id), order_id=order_id, amount=Decimal("7.00")
        )
    ).then_counted("duplicate", 1).then_command_ids_stable()


def test_command_ids_are_deterministic_across_runs() -> None:
    _, e = order_events()
    voided = e["OrderPayment.Voided"]
    first = given(pm()).when(e["Confirmed"]).when_time_passes(minutes=31).when(voided)
    again = given(pm()).when(e["Confirmed"]).when_time_passes(minutes=31).when(voided)
    assert [c.command_id for c in first.commands] == [c.command_id for c in again.commands]
    assert len({c.command_id for c in first.commands}) == 3


def test_a_deadline_reaching_a_completed_instance_is_a_counted_noop() -> None:
    _order_id, e = order_events()
    (
        given(pm(), e["Confirmed"], e["OrderPayment.Received"])
        .when_deadline_reaches_completed("payment_due")
        .then_no_commands()
        .then_counted("deadline_after_completion", 1)
    )


def test_events_after_completion_and_for_unknown_instances_are_counted() -> None:
    _order_id, e = order_events(cancel=True)
    (
        given(pm(), e["Confirmed"], e["OrderPayment.Received"])
        .when(e["Cancelled"])
        .then_no_commands()
        .then_counted("after_completion", 1)
    )
    _, cancelled = order_events(cancel=True)
    (
        given(pm())
        .when(cancelled["OrderPayment.Received"])  # no instance: not a starting event
        .then_no_commands()
        .then_no_instance()
        .then_counted("unknown_ignored", 1)
    )


def test_the_customer_cancelling_voids_the_payment() -> None:
    order_id, e = order_events(cancel=True)
    (
        given(pm(), e["Confirmed"])
        .when(e["Cancelled"])
        .then_commands(VoidPayment(payment_id=payment_id_for(order_id), reason="order cancelled"))
        .then_completed()
        .then_deadlines()
    )


# -- policies on small managers --------------------------------------------------------------


class Seen(ProcessState):
    count: int = 0


class Strict(ProcessManager):
    name = "strict"
    state_type = Seen
    correlate = {
        Order.Confirmed: lambda e: e.originator_id,
        Order.Cancelled: lambda e: e.originator_id,
    }
    starts = (Order.Confirmed,)
    on_unknown = "dead_letter"

    @reacts(Order.Confirmed, Order.Cancelled)
    def seen(self, state: Seen, event: Any, ctx: Context) -> Seen:
        if isinstance(event, Order.Cancelled) and state.count == 0:
            raise RuntimeError("boom")
        return state.evolve(count=state.count + 1)


def test_on_unknown_dead_letter_raises_a_not_retryable_error() -> None:
    _, e = order_events(cancel=True)
    instance = Instance(Strict(), "x")
    with pytest.raises(UnknownInstanceError) as caught:
        Strict().handle(instance, e["Cancelled"], given(Strict()).now)
    assert caught.value.retryable is False


def test_on_unknown_start_starts_an_instance() -> None:
    class Lenient(Strict):
        name = "lenient"
        on_unknown = "start"

        @reacts(Order.Cancelled)
        def cancelled(self, state: Seen, event: Any, ctx: Context) -> Seen:
            return state.evolve(count=99)

    _, e = order_events(cancel=True)
    given(Lenient()).when(e["Cancelled"]).then_active().then_state(count=99)


def test_skip_policy_records_a_failed_fact() -> None:
    _, e = order_events(cancel=True)
    pm_ = Strict()
    outcome = pm_.failed(Instance(pm_, "x"), e["Cancelled"], RuntimeError("boom"))
    assert [f.kind for f in outcome.facts] == ["Failed"] and outcome.reason == "skipped_errors"


def test_declaration_errors_are_clear() -> None:
    class NoName(ProcessManager):
        pass

    with pytest.raises(ConfigurationError, match="needs a `name`"):
        NoName()

    class NoCorrelation(ProcessManager):
        name = "nc"
        starts = (Order.Confirmed,)

        @reacts(Order.Confirmed)
        def a(self, state: Any, event: Any, ctx: Context) -> None: ...

    with pytest.raises(ConfigurationError, match="correlate has no instance id"):
        NoCorrelation()

    class BadState(ProcessState):
        needed: int

    class NoDefaults(NoCorrelation):
        name = "nd"
        correlate = {Order.Confirmed: lambda e: e.originator_id}
        state_type = BadState

    with pytest.raises(ConfigurationError, match="needs a default"):
        NoDefaults()


def test_handler_misuse_is_a_typed_error() -> None:
    class Wrong(ProcessManager):
        name = "wrong"
        correlate = {Order.Confirmed: lambda e: e.originator_id}
        starts = (Order.Confirmed,)

        @reacts(Order.Confirmed)
        def a(self, state: Any, event: Any, ctx: Context) -> Any:
            ctx.schedule("nope", after=timedelta(minutes=1))

        @deadline("real")
        def real(self, state: Any, ctx: Context) -> None: ...

    _, e = order_events()
    with pytest.raises(ProcessError, match="no @deadline"):
        given(Wrong()).when(e["Confirmed"])
