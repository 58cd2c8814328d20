"""Given / when / then tests of the shop's Customer aggregate, through its command handlers."""

from __future__ import annotations

from uuid import uuid4

import pytest

from framework.errors import AggregateExistsError, AggregateNotFoundError, CommandValidationError
from framework.testing import ev, scenario
from sample_app.shop.application import build
from sample_app.shop.commands import ChangeCustomerAddress, DeactivateCustomer, RegisterCustomer
from sample_app.shop.domain import (
    Address,
    Customer,
    CustomerAlreadyDeactivated,
    CustomerInactive,
    CustomerStatus,
)

shop = scenario(build())

ADA = uuid4()
BERLIN = Address(street="Unter den Linden 1", city="Berlin", postcode="10117", country="DE")
PARIS = Address(street="1 Rue de Rivoli", city="Paris", postcode="75001", country="FR")


def registered(address: Address = BERLIN) -> object:
    return ev(Customer.Registered, name="Ada Lovelace", email="ada@example.com", address=address)


def test_register_a_customer() -> None:
    (
        shop.given()
        .when(
            RegisterCustomer(
                customer_id=ADA,
                name="  Ada Lovelace ",
                email="Ada@Example.COM",
                address={
                    "street": "Unter den Linden 1",
                    "city": "Berlin",
                    "country": "de",
                    "postcode": "10117",
                },
            )
        )
        .then(
            ev(
                Customer.Registered,
                id=ADA,
                name="Ada Lovelace",
                email="Ada@example.com",
                address=BERLIN,
            )
        )
        .then_state(status=CustomerStatus.ACTIVE, address=BERLIN)
    )


def test_a_customer_id_is_taken_once() -> None:
    shop.given(registered(), id=ADA).when(
        RegisterCustomer(customer_id=ADA, name="Eve", email="eve@example.com", address=PARIS)
    ).then_raises(AggregateExistsError, match="exists already")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("email", "not-an-email", "should match pattern"),
        ("email", "a@b", "should match pattern"),
        ("name", "   ", "at least 1 character"),
        ("name", "x" * 101, "at most 100 characters"),
        ("country", "XX", "not an ISO 3166-1 alpha-2 country code"),
        ("country", "DEU", "at most 2 characters"),
    ],
)
def test_registration_input_is_validated(field: str, value: str, message: str) -> None:
    data = {
        "name": "Ada",
        "email": "ada@example.com",
        "address": {"street": "s", "city": "c", "country": "DE"},
    }
    if field == "country":
        data["address"] = {**data["address"], "country": value}  # type: ignore[dict-item]
    else:
        data[field] = value
    with pytest.raises(CommandValidationError, match=message) as raised:
        RegisterCustomer.parse(data)
    where = ["address", "country"] if field == "country" else [field]
    assert [e["loc"] for e in raised.value.errors] == [where]


def test_change_the_address() -> None:
    (
        shop.given(registered(), id=ADA)
        .when(ChangeCustomerAddress(customer_id=ADA, address=PARIS))
        .then(ev(Customer.AddressChanged, address=PARIS))
        .then_state(address=PARIS)
    )


def test_moving_to_the_same_address_records_nothing() -> None:
    shop.given(registered(), id=ADA).when(
        ChangeCustomerAddress(customer_id=ADA, address=BERLIN)
    ).then_nothing()


def test_a_deactivated_customer_cannot_move() -> None:
    shop.given(registered(), ev(Customer.Deactivated, reason=None), id=ADA).when(
        ChangeCustomerAddress(customer_id=ADA, address=PARIS)
    ).then_raises(CustomerInactive, match="cannot change the address.*deactivated")


def test_deactivate() -> None:
    (
        shop.given(registered(), id=ADA)
        .when(DeactivateCustomer(customer_id=ADA, reason="asked to leave"))
        .then(ev(Customer.Deactivated, reason="asked to leave"))
        .then_state(status=CustomerStatus.DEACTIVATED)
    )


def test_deactivate_twice() -> None:
    shop.given(registered(), ev(Customer.Deactivated, reason=None), id=ADA).when(
        DeactivateCustomer(customer_id=ADA)
    ).then_raises(CustomerAlreadyDeactivated, match="deactivated already")


def test_unknown_customer() -> None:
    shop.given().when(DeactivateCustomer(customer_id=uuid4())).then_raises(AggregateNotFoundError)
