"""The customers read model (a batch handler): same rows whether a customer's events arrive in
one batch or one by one, checked for redelivery and rebuild by given_events."""

from __future__ import annotations

import uuid

import pytest

from framework.projection_testing import given_events
from framework.testing import ev
from projections.customers import CustomersProjection
from sample_app.shop.domain import Address, Customer

pytestmark = pytest.mark.timeout(60)

BERLIN = Address(street="Unter den Linden 1", city="Berlin", postcode="10117", country="DE")
PARIS = Address(street="1 rue de Rivoli", city="Paris", postcode="75001", country="FR")


def test_customers_registered_moved_and_deactivated() -> None:
    ada, bob, cy = (uuid.UUID(int=i) for i in (1, 2, 3))
    registered = {"email": "x@example.com", "address": BERLIN}
    (
        given_events(
            CustomersProjection(),
            ev(Customer.Registered, id=ada, name="Ada", **registered),
            ev(Customer.Registered, id=bob, name="Bob", **registered),
            ev(Customer.AddressChanged, id=ada, address=PARIS),
            ev(Customer.Deactivated, id=bob, reason=None),
            ev(Customer.Registered, id=cy, name="Cy", **registered),
            ev(Customer.AddressChanged, id=bob, address=PARIS),
            ev(Customer.Deactivated, id=ada, reason="moved away"),
        ).then_rows(
            CustomersProjection.customers,
            [
                {"customer_id": ada, "city": "Paris", "status": "deactivated", "version": 3},
                {"customer_id": bob, "city": "Paris", "status": "deactivated", "version": 3},
                {"customer_id": cy, "city": "Berlin", "status": "active", "version": 1},
            ],
        )
    )
