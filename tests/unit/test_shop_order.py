"""Given / when / then tests of the shop's Order aggregate: every invariant, through the
command handlers (so each test also checks the state replays from the events)."""

from __future__ import annotations

from decimal import Decimal
from uuid import uuid4

import pytest

from framework.errors import AggregateNotFoundError, CommandValidationError
from framework.testing import EventSpec, ev, given, scenario
from sample_app.shop.application import build
from sample_app.shop.commands import (
    AddOrderLine,
    CancelOrder,
    ConfirmOrder,
    PlaceOrder,
    RemoveOrderLine,
    ShipOrder,
)
from sample_app.shop.domain import (
    MAX_LINES,
    Address,
    Carrier,
    Customer,
    CustomerInactive,
    DuplicateProduct,
    EmptyOrder,
    LineNotFound,
    Order,
    OrderAlreadyCancelled,
    OrderAlreadyShipped,
    OrderLine,
    OrderNotConfirmed,
    OrderNotOpen,
    OrderStatus,
    TooManyLines,
)

shop = scenario(build())

ADA = uuid4()
ORDER = uuid4()
TEA = OrderLine(product="Tea", quantity=2, unit_price=Decimal("3.50"))
CAKE = OrderLine(product="Cake", quantity=1, unit_price=Decimal("12.00"))
BERLIN = Address(street="Unter den Linden 1", city="Berlin", country="DE")


def customer(*more: EventSpec) -> tuple[EventSpec, ...]:
    return (
        ev(Customer.Registered, id=ADA, name="Ada", email="ada@example.com", address=BERLIN),
        *more,
    )


def placed(*lines: OrderLine) -> EventSpec:
    return ev(
        Order.Placed,
        customer_id=ADA,
        lines=list(lines or (TEA, CAKE)),
        requested_delivery=None,
        gift_wrap=False,
    )


CONFIRMED = ev(Order.Confirmed, total=Decimal("19.00"), ship_to=BERLIN)
SHIPPED = ev(Order.Shipped, carrier=Carrier.DHL, tracking_number=None)
CANCELLED = ev(Order.Cancelled, reason="other", note=None)


# -- placing -------------------------------------------------------------------------------


def test_place_an_order() -> None:
    (
        shop.given(*customer(), id=ORDER)
        .when(PlaceOrder(order_id=ORDER, customer_id=ADA, lines=[TEA, CAKE], gift_wrap=True))
        .then(ev(Order.Placed, id=ORDER, customer_id=ADA, lines=[TEA, CAKE], gift_wrap=True))
        .then_state(status=OrderStatus.OPEN, total=Decimal("19.00"))
    )


def test_an_inactive_customer_cannot_order() -> None:
    shop.given(*customer(ev(Customer.Deactivated, id=ADA, reason=None))).when(
        PlaceOrder(order_id=ORDER, customer_id=ADA, lines=[TEA])
    ).then_raises(CustomerInactive, match="deactivated and cannot place orders")


def test_an_unknown_customer_cannot_order() -> None:
    shop.given().when(PlaceOrder(customer_id=uuid4(), lines=[TEA])).then_raises(
        AggregateNotFoundError, match="no Customer has id"
    )


def test_one_line_per_product() -> None:
    shop.given(*customer()).when(
        PlaceOrder(customer_id=ADA, lines=[TEA, TEA.model_copy(update={"product": "tea"})])
    ).then_raises(DuplicateProduct, match="appears on two lines")


@pytest.mark.parametrize(
    ("lines", "loc", "message"),
    [
        ([], ["lines"], "at least 1 item"),
        (
            [{"product": "Tea", "quantity": 0, "unit_price": "1"}],
            ["lines", 0, "quantity"],
            "greater than 0",
        ),
        (
            [{"product": "Tea", "quantity": 1, "unit_price": "-0.01"}],
            ["lines", 0, "unit_price"],
            "greater than or equal to 0",
        ),
        (
            [{"product": "", "quantity": 1, "unit_price": "1"}],
            ["lines", 0, "product"],
            "at least 1 character",
        ),
        (
            [{"product": "Tea", "quantity": 1, "unit_price": "1.001"}],
            ["lines", 0, "unit_price"],
            "decimal places",
        ),
        (
            [{"product": "Tea", "quantity": 1, "unit_price": "NaN"}],
            ["lines", 0, "unit_price"],
            "finite",
        ),
        ([TEA.model_dump()] * (MAX_LINES + 1), ["lines"], f"at most {MAX_LINES} items"),
    ],
)
def test_order_lines_are_validated(lines: list[object], loc: list[object], message: str) -> None:
    with pytest.raises(CommandValidationError, match=message) as raised:
        PlaceOrder.parse({"customer_id": str(ADA), "lines": lines})
    assert raised.value.errors[0]["loc"] == loc


def test_the_aggregate_itself_refuses_an_empty_order() -> None:
    # Commands validate first; the aggregate keeps the invariant for every other caller.
    active = Customer(id=ADA, name="Ada", email="ada@example.com", address=BERLIN)
    with pytest.raises(EmptyOrder, match="at least one line"):
        Order.place(ORDER, active, [])
    with pytest.raises(TooManyLines, match=f"at most {MAX_LINES} lines"):
        Order.place(ORDER, active, [TEA.model_copy(update={"product": f"p{i}"}) for i in range(51)])


# -- changing lines --------------------------------------------------------------------------


def test_add_a_line_while_open() -> None:
    new = OrderLine(product="Scones", quantity=6, unit_price=Decimal("1.25"))
    (
        shop.given(*customer(), placed(), id=ORDER)
        .when(AddOrderLine(order_id=ORDER, line=new))
        .then(ev(Order.LineAdded, line=new))
        .then_state(lines=[TEA, CAKE, new], total=Decimal("26.50"))
    )


def test_add_a_product_twice() -> None:
    shop.given(*customer(), placed(), id=ORDER).when(
        AddOrderLine(order_id=ORDER, line=TEA.model_copy(update={"quantity": 5}))
    ).then_raises(DuplicateProduct, match="remove that line first")


def test_add_more_lines_than_allowed() -> None:
    lines = [TEA.model_copy(update={"product": f"p{i}"}) for i in range(MAX_LINES)]
    shop.given(*customer(), placed(*lines), id=ORDER).when(
        AddOrderLine(order_id=ORDER, line=CAKE)
    ).then_raises(TooManyLines, match=f"has {MAX_LINES} lines")


def test_remove_a_line() -> None:
    (
        shop.given(*customer(), placed(), id=ORDER)
        .when(RemoveOrderLine(order_id=ORDER, product=" cake "))
        .then(ev(Order.LineRemoved, product="Cake"))
        .then_state(lines=[TEA], total=Decimal("7.00"))
    )


def test_remove_a_missing_line() -> None:
    shop.given(*customer(), placed(), id=ORDER).when(
        RemoveOrderLine(order_id=ORDER, product="Coffee")
    ).then_raises(LineNotFound, match="no line for 'Coffee'")


def test_never_remove_the_last_line() -> None:
    shop.given(*customer(), placed(TEA), id=ORDER).when(
        RemoveOrderLine(order_id=ORDER, product="Tea")
    ).then_raises(EmptyOrder, match="cancel the order instead")


@pytest.mark.parametrize("past", [[CONFIRMED], [CONFIRMED, SHIPPED], [CANCELLED]])
def test_lines_are_fixed_once_the_order_is_not_open(past: list[EventSpec]) -> None:
    shop.given(*customer(), placed(), *past, id=ORDER).when(
        AddOrderLine(order_id=ORDER, line=OrderLine(product="Jam", quantity=1, unit_price=1))
    ).then_raises(OrderNotOpen, match="not open")
    shop.given(*customer(), placed(), *past, id=ORDER).when(
        RemoveOrderLine(order_id=ORDER, product="Tea")
    ).then_raises(OrderNotOpen, match="not open")


# -- lifecycle -------------------------------------------------------------------------------


def test_confirm() -> None:
    (
        shop.given(*customer(), placed(), id=ORDER)
        .when(ConfirmOrder(order_id=ORDER))
        .then(ev(Order.Confirmed, total=Decimal("19.00"), ship_to=BERLIN))
        .then_state(status=OrderStatus.CONFIRMED, ship_to=BERLIN)
    )


def test_confirm_freezes_the_ship_to_address_of_the_moved_customer() -> None:
    paris = Address(street="1 Rue de Rivoli", city="Paris", country="FR")
    shop.given(
        *customer(ev(Customer.AddressChanged, id=ADA, address=paris)), placed(), id=ORDER
    ).when(ConfirmOrder(order_id=ORDER)).then(
        ev(Order.Confirmed, total=Decimal("19.00"), ship_to=paris)
    )


@pytest.mark.parametrize(
    ("past", "status"), [([CONFIRMED], "confirmed"), ([CANCELLED], "cancelled")]
)
def test_confirm_only_an_open_order(past: list[EventSpec], status: str) -> None:
    shop.given(*customer(), placed(), *past, id=ORDER).when(
        ConfirmOrder(order_id=ORDER)
    ).then_raises(OrderNotOpen, match=f"it is {status}, not open")


def test_ship() -> None:
    (
        shop.given(*customer(), placed(), CONFIRMED, id=ORDER)
        .when(ShipOrder(order_id=ORDER, carrier="ups", tracking_number="1Z999"))
        .then(ev(Order.Shipped, carrier=Carrier.UPS, tracking_number="1Z999"))
        .then_state(status=OrderStatus.SHIPPED, carrier=Carrier.UPS)
    )


def test_ship_only_a_confirmed_order() -> None:
    shop.given(*customer(), placed(), id=ORDER).when(ShipOrder(order_id=ORDER)).then_raises(
        OrderNotConfirmed, match="confirm it first"
    )
    shop.given(*customer(), placed(), CANCELLED, id=ORDER).when(
        ShipOrder(order_id=ORDER)
    ).then_raises(OrderNotConfirmed, match="is cancelled")
    shop.given(*customer(), placed(), CONFIRMED, SHIPPED, id=ORDER).when(
        ShipOrder(order_id=ORDER)
    ).then_raises(OrderAlreadyShipped, match="shipped already")


@pytest.mark.parametrize("past", [[], [CONFIRMED]])
def test_cancel_before_shipping(past: list[EventSpec]) -> None:
    (
        shop.given(*customer(), placed(), *past, id=ORDER)
        .when(CancelOrder(order_id=ORDER, reason="out of stock", note="no cake left"))
        .then(ev(Order.Cancelled, reason="out of stock", note="no cake left"))
        .then_state(status=OrderStatus.CANCELLED)
    )


def test_never_cancel_after_shipping() -> None:
    shop.given(*customer(), placed(), CONFIRMED, SHIPPED, id=ORDER).when(
        CancelOrder(order_id=ORDER)
    ).then_raises(OrderAlreadyShipped, match="can no longer be cancelled")


def test_cancel_twice() -> None:
    shop.given(*customer(), placed(), CANCELLED, id=ORDER).when(
        CancelOrder(order_id=ORDER)
    ).then_raises(OrderAlreadyCancelled, match="cancelled already")


def test_cancel_reason_is_one_of_a_list() -> None:
    with pytest.raises(CommandValidationError, match="reason") as raised:
        CancelOrder.parse({"order_id": str(ORDER), "reason": "bored"})
    assert raised.value.errors[0]["type"] == "literal_error"


def test_the_aggregate_alone() -> None:
    # The same rules hold without the application, straight on the aggregate.
    given(placed(), CONFIRMED).when(lambda order: order.ship(Carrier.POST)).then(
        ev(Order.Shipped, carrier=Carrier.POST, tracking_number=None)
    ).then_state(status=OrderStatus.SHIPPED)
    given(placed(), CONFIRMED, SHIPPED).when(lambda order: order.cancel("other")).then_raises(
        OrderAlreadyShipped
    )
