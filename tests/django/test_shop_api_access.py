"""Who may read and run what over the JSON API, and inputs that used to answer 500 or hang:
the query views need login and the read model's view permission, non-ASCII digits and
unreachable ``?after=`` positions are 400s, errors under /api/ are JSON."""

from __future__ import annotations

import json
from typing import Any
from uuid import uuid4

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "readmodels"])

ADDRESS = {"street": "Unter den Linden 1", "city": "Berlin", "postcode": "10117", "country": "DE"}

QUERY_PATHS = [
    "/api/customers/",
    "/api/orders/",
    "/api/sales/hourly",
]


def post(client: Client, command_type: str, body: Any) -> Any:
    return client.post(
        f"/api/commands/{command_type}", json.dumps(body), content_type="application/json"
    )


def register(client: Client) -> dict[str, Any]:
    response = post(
        client,
        "RegisterCustomer",
        {"name": "Ada", "email": "ada@example.com", "address": ADDRESS},
    )
    assert response.status_code == 201, response.content
    return dict(response.json())


def place(client: Client, customer_id: str) -> dict[str, Any]:
    line = {"product": "Tea", "quantity": 1, "unit_price": "2.50"}
    response = post(client, "PlaceOrder", {"customer_id": customer_id, "lines": [line]})
    assert response.status_code == 201, response.content
    return dict(response.json())


@pytest.fixture
def seeded(admin_client: Client, shop: Any) -> dict[str, Any]:
    customer = register(admin_client)
    order = place(admin_client, customer["aggregate_id"])
    shop.catch_up()
    return {"customer": customer["aggregate_id"], "order": order["aggregate_id"]}


def every_path(seeded: dict[str, Any]) -> list[str]:
    return [
        *QUERY_PATHS,
        f"/api/customers/{seeded['customer']}",
        f"/api/orders/{seeded['order']}",
        f"/api/orders/{seeded['order']}/history",
    ]


def test_anonymous_users_read_nothing(seeded: dict[str, Any]) -> None:
    anonymous = Client()
    for path in every_path(seeded):
        response = anonymous.get(path)
        assert response.status_code == 401, path
        assert response["Content-Type"] == "application/json"
        assert "Ada" not in response.content.decode() and "ada@" not in response.content.decode()
    # ?after= (a wait) is refused before it waits; an unknown command lists nothing.
    assert anonymous.get("/api/orders/?after=0:1").status_code == 401
    unknown = anonymous.post("/api/commands/NoSuch", "{}", content_type="application/json")
    assert unknown.status_code == 401 and "known" not in unknown.json()


def test_reading_needs_the_read_models_view_permission(
    seeded: dict[str, Any], make_user: Any
) -> None:
    clerk = Client()
    clerk.force_login(make_user("clerk", "shop.view_order"))
    assert clerk.get("/api/orders/").status_code == 200
    assert clerk.get(f"/api/orders/{seeded['order']}").status_code == 200
    for path in ("/api/customers/", f"/api/customers/{seeded['customer']}", "/api/sales/hourly"):
        response = clerk.get(path)
        assert response.status_code == 403, path
        assert "needs shop.view_" in response.json()["error"]
    # The history names who issued each command: its own permission.
    assert clerk.get(f"/api/orders/{seeded['order']}/history").status_code == 403
    # An unknown command lists only what this user may execute (nothing).
    unknown = clerk.post("/api/commands/NoSuch", "{}", content_type="application/json")
    assert unknown.status_code == 404 and unknown.json()["known"] == []


def test_the_permission_is_a_setting_per_view(seeded: dict[str, Any], make_user: Any) -> None:
    from framework.contrib.django.views import LOGIN_REQUIRED, PUBLIC, ReadModelQuery
    from projections import customers

    public = ReadModelQuery(table=customers.customers, key="customer_id", permission=PUBLIC)
    login = ReadModelQuery(table=customers.customers, key="customer_id", permission=LOGIN_REQUIRED)
    from django.contrib.auth.models import AnonymousUser
    from django.test import RequestFactory

    request = RequestFactory().get("/api/customers/")
    request.user = AnonymousUser()
    assert public.list_view(request).status_code == 200
    assert login.list_view(request).status_code == 401
    request.user = make_user("nobody")
    assert login.list_view(request).status_code == 200


@pytest.mark.parametrize("value", ["²", "¹", "\u0661", "\U0001d7e1", "1²"])
@pytest.mark.parametrize("name", ["limit", "offset"])
def test_non_ascii_digits_are_a_400(admin_client: Client, shop: Any, name: str, value: str) -> None:
    for path in QUERY_PATHS:
        response = admin_client.get(path, {name: value})
        assert response.status_code == 400, (path, response.content)
        assert response.json()["parameter"] == name


@pytest.mark.parametrize("after", ["7:0", "0:999999", "0:1,3:0", "²:1"])
def test_unreachable_after_positions_are_a_400(
    seeded: dict[str, Any], admin_client: Client, after: str
) -> None:
    response = admin_client.get("/api/orders/", {"after": after})
    assert response.status_code == 400, response.content
    assert response.json()["parameter"] == "after"


def test_reachable_after_positions_still_wait(seeded: dict[str, Any], admin_client: Client) -> None:
    response = admin_client.get("/api/orders/", {"after": "0:1"})
    assert response.status_code == 200 and response.json()["caught_up"] is True


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("get", "/api/no/such/thing", 404),
        ("put", "/api/customers/", 405),
        ("get", "/api/commands/PlaceOrder", 405),
    ],
)
def test_errors_under_api_are_json(
    admin_client: Client, shop: Any, method: str, path: str, status: int
) -> None:
    response = getattr(admin_client, method)(path)
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]


def test_a_csrf_failure_under_api_is_json(shop: Any, make_user: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(make_user("clerk", "keel.execute_registercustomer"))
    response = post(client, "RegisterCustomer", {"name": "Ada"})
    assert response.status_code == 403
    assert response["Content-Type"] == "application/json"
    assert "CSRF" in response.json()["error"]


def test_true_is_not_a_quantity(admin_client: Client, shop: Any) -> None:
    customer = register(admin_client)
    head = shop.head()
    line = {"product": "Tea", "quantity": True, "unit_price": "2.50"}
    response = post(
        admin_client, "PlaceOrder", {"customer_id": customer["aggregate_id"], "lines": [line]}
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "lines.0.quantity"
    assert shop.head() == head


def test_a_stranger_cannot_run_commands(shop: Any) -> None:
    anonymous = Client()
    response = post(anonymous, "RegisterCustomer", {"name": "x", "customer_id": str(uuid4())})
    assert response.status_code in {401, 403}
    assert response["Content-Type"] == "application/json"
