"""The JSON API: query views (filters, ordering, pagination, 400s, 404s, read-your-writes) and
the command endpoint, including T8 (malformed command input)."""

from __future__ import annotations

import json
import math
import time
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "readmodels"])

ADDRESS = {"street": "Unter den Linden 1", "city": "Berlin", "postcode": "10117", "country": "DE"}


def post(client: Client, command_type: str, body: Any, **extra: Any) -> Any:
    raw = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(
        f"/api/commands/{command_type}", raw, content_type="application/json", **extra
    )


def ok(client: Client, command_type: str, body: dict[str, Any]) -> dict[str, Any]:
    response = post(client, command_type, body)
    assert response.status_code == 201, response.content
    return dict(response.json())


@pytest.fixture
def api(admin_client: Client) -> Client:
    return admin_client


def seed(api: Client) -> dict[str, Any]:
    """Three customers in DE, FR and US; five orders in several states."""
    people = {}
    for name, country in (("Ada", "DE"), ("Bea", "FR"), ("Cy", "US")):
        result = ok(
            api,
            "RegisterCustomer",
            {
                "name": name,
                "email": f"{name.lower()}@example.com",
                "address": {**ADDRESS, "country": country},
            },
        )
        people[name] = result["aggregate_id"]
    orders = []
    for n, who in enumerate(["Ada", "Ada", "Bea", "Cy", "Cy"]):
        line = {"product": "Tea", "quantity": n + 1, "unit_price": "2.50"}
        orders.append(
            ok(api, "PlaceOrder", {"customer_id": people[who], "lines": [line]})["aggregate_id"]
        )
    last = ok(api, "ConfirmOrder", {"order_id": orders[1]})
    ok(api, "CancelOrder", {"order_id": orders[2], "reason": "other"})
    return {"people": people, "orders": orders, "after": last["after"]}


# -- the command endpoint ----------------------------------------------------------------------


def test_a_command_returns_its_result_and_positions(api: Client, shop: Any) -> None:
    customer_id = str(uuid4())
    body = {
        "customer_id": customer_id,
        "name": "Ada",
        "email": "ada@example.com",
        "address": ADDRESS,
    }
    response = post(api, "RegisterCustomer", body, HTTP_X_CORRELATION_ID=str(uuid4()))
    assert response.status_code == 201
    result = response.json()
    assert result["aggregate_id"] == customer_id
    assert result["versions"] == {customer_id: 1}
    assert result["positions"] == {"0": shop.head()[0]}
    assert result["after"] == f"0:{shop.head()[0]}"
    assert result["replayed"] is False
    again = post(api, "RegisterCustomer", {**body, "command_id": result["command_id"]})
    assert again.status_code == 200 and again.json()["replayed"] is True
    reused = post(
        api, "RegisterCustomer", {**body, "name": "Eve", "command_id": result["command_id"]}
    )
    assert reused.status_code == 409 and "another payload" in reused.json()["error"]
    event = shop.app.history(UUID(customer_id))[0]
    assert event.metadata.user == "root"


@pytest.mark.parametrize(
    ("command_type", "body", "status", "fragment"),
    [
        (
            "ConfirmOrder",
            {"order_id": "00000000-0000-4000-8000-000000000000"},
            404,
            "no Order has id",
        ),
        ("NoSuchCommand", {}, 404, "unknown command"),
        ("RegisterCustomer", {"name": "Ada"}, 400, "invalid RegisterCustomer"),
        ("RegisterCustomer", "[1, 2]", 400, "must be a JSON object"),
        ("RegisterCustomer", "{bad json", 400, "not valid JSON"),
    ],
)
def test_command_errors(
    api: Client, shop: Any, command_type: str, body: Any, status: int, fragment: str
) -> None:
    head = shop.head()
    response = post(api, command_type, body)
    assert response.status_code == status
    assert fragment in response.json()["error"]
    assert shop.head() == head


def test_field_errors_name_their_fields(api: Client) -> None:
    response = post(
        api,
        "PlaceOrder",
        {"customer_id": "nope", "lines": [{"product": "Tea", "quantity": 0, "unit_price": "1"}]},
    )
    assert response.status_code == 400
    fields = {e["field"]: e["type"] for e in response.json()["errors"]}
    assert fields == {"customer_id": "uuid_parsing", "lines.0.quantity": "greater_than"}


def test_domain_errors_are_409(api: Client, shop: Any) -> None:
    data = seed(api)
    head = shop.head()
    response = post(api, "ShipOrder", {"order_id": data["orders"][0]})
    assert response.status_code == 409
    assert response.json()["type"] == "OrderNotConfirmed"
    assert "confirm it first" in response.json()["error"]
    taken = post(
        api,
        "RegisterCustomer",
        {
            "customer_id": data["people"]["Ada"],
            "name": "X",
            "email": "x@example.com",
            "address": ADDRESS,
        },
    )
    assert taken.status_code == 409 and taken.json()["type"] == "AggregateExistsError"
    assert shop.head() == head


def test_authentication_permission_method_and_content_type(shop: Any, make_user: Any) -> None:
    body = {"name": "Ada", "email": "ada@example.com", "address": ADDRESS}
    head = shop.head()
    assert post(Client(), "RegisterCustomer", body).status_code == 401
    clerk = Client()
    clerk.force_login(make_user("clerk", "keel.execute_placeorder"))
    response = post(clerk, "RegisterCustomer", body)
    assert response.status_code == 403
    assert response.json() == {"error": "you may not execute RegisterCustomer"}
    assert clerk.get("/api/commands/PlaceOrder").status_code == 405
    form = clerk.post("/api/commands/PlaceOrder", {"customer_id": "x"})
    assert form.status_code == 415
    assert shop.head() == head


def test_the_command_endpoint_enforces_csrf(shop: Any, make_user: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(make_user("root", superuser=True))
    body = {"name": "Ada", "email": "ada@example.com", "address": ADDRESS}
    head = shop.head()
    assert post(client, "RegisterCustomer", body).status_code == 403
    assert shop.head() == head
    client.get("/admin/")  # sets the csrftoken cookie
    token = client.cookies["csrftoken"].value
    assert post(client, "RegisterCustomer", body, HTTP_X_CSRFTOKEN=token).status_code == 201


# -- query views -------------------------------------------------------------------------------


def test_customers_filter_order_and_paginate(api: Client, shop: Any, worker: Any) -> None:
    seed(api)
    worker()
    everyone = api.get("/api/customers/").json()
    assert everyone["count"] == 3 and [c["name"] for c in everyone["results"]] == [
        "Ada",
        "Bea",
        "Cy",
    ]
    assert api.get("/api/customers/", {"country": "fr"}).json()["results"][0]["name"] == "Bea"
    both = api.get("/api/customers/", {"country": "DE,US", "ordering": "-name"}).json()
    assert [c["name"] for c in both["results"]] == ["Cy", "Ada"]
    page = api.get("/api/customers/", {"limit": 2}).json()
    assert [c["name"] for c in page["results"]] == ["Ada", "Bea"]
    assert page["next"].endswith("/api/customers/?limit=2&offset=2") and page["previous"] is None
    last = api.get(page["next"]).json()
    assert [c["name"] for c in last["results"]] == ["Cy"] and last["next"] is None
    assert last["previous"].endswith("offset=0")
    assert api.get("/api/customers/", {"search": "b"}).json()["count"] == 1
    assert api.get("/api/customers/", {"search": "%"}).json()["count"] == 0  # LIKE is escaped


def test_orders_filter_by_status_and_customer(api: Client, shop: Any, worker: Any) -> None:
    data = seed(api)
    worker()
    ada = data["people"]["Ada"]
    mine = api.get("/api/orders/", {"customer": ada, "ordering": "total"}).json()
    assert [o["total"] for o in mine["results"]] == ["2.50", "5.00"]
    assert {o["customer_name"] for o in mine["results"]} == {"Ada"}
    open_ = api.get("/api/orders/", {"status": "open"}).json()
    assert open_["count"] == 3
    assert (
        api.get("/api/orders/", {"status": "open,cancelled", "country": "fr"}).json()["count"] == 1
    )
    one = api.get(f"/api/orders/{data['orders'][1]}").json()["data"]
    assert one["status"] == "confirmed" and one["customer_country"] == "DE"
    assert one["lines"] == [{"product": "Tea", "quantity": 2, "unit_price": "2.50"}]
    history = api.get(f"/api/orders/{data['orders'][1]}/history").json()
    assert [(e["version"], e["event_type"]) for e in history["results"]] == [
        (1, "Order.Placed"),
        (2, "Order.Confirmed"),
    ]
    assert history["results"][1]["meta"]["user"] == "root"
    assert history["results"][1]["payload"]["total"] == "5.00"
    hours = api.get("/api/sales/hourly").json()["results"]
    assert len(hours) == 1 and hours[0]["orders"] == 1 and Decimal(hours[0]["revenue"]) == 5


@pytest.mark.parametrize(
    ("url", "params", "parameter", "fragment"),
    [
        ("/api/orders/", {"status": "lost"}, "status", "must be one of open, confirmed"),
        ("/api/orders/", {"customer": "not-a-uuid"}, "customer", "is not valid"),
        ("/api/orders/", {"ordering": "customer_email"}, "ordering", "cannot order by"),
        ("/api/orders/", {"limit": "1000"}, "limit", "from 1 to 100"),
        ("/api/orders/", {"limit": "-1"}, "limit", "whole number"),
        ("/api/orders/", {"offset": "x"}, "offset", "whole number"),
        ("/api/orders/", {"colour": "red"}, "colour", "unknown parameter"),
        ("/api/orders/", {"after": "zero"}, "after", "PARTITION:OFFSET"),
        ("/api/orders/", {"placed_since": "yesterday"}, "placed_since", "is not valid"),
        ("/api/customers/", {"country": ""}, "country", "non-empty"),
        ("/api/customers/", {"search": "x" * 300}, "search", "longer than"),
    ],
)
def test_bad_parameters_are_400(
    api: Client, shop: Any, url: str, params: dict[str, str], parameter: str, fragment: str
) -> None:
    response = api.get(url, params)
    assert response.status_code == 400
    assert response.json()["parameter"] == parameter
    assert fragment in response.json()["error"]


def test_unknown_ids_are_404(api: Client, shop: Any) -> None:
    for url in (
        f"/api/customers/{uuid4()}",
        f"/api/orders/{uuid4()}",
        "/api/orders/not-a-uuid",
        f"/api/orders/{uuid4()}/history",
    ):
        response = api.get(url)
        assert response.status_code == 404, url
        assert "no " in response.json()["error"]


def test_read_your_writes(api: Client, shop: Any, patient: None) -> None:
    data = seed(api)
    order = data["orders"][1]
    # No worker yet: the view waits (bounded), then says it did not catch up.
    started = time.monotonic()
    stale = api.get(f"/api/orders/{order}", {"after": data["after"]})
    assert stale.status_code == 404 and stale.json()["caught_up"] is False
    assert 4.5 < time.monotonic() - started < 8
    import threading

    from framework.contrib.django import conf
    from framework.contrib.django.operations import DjangoProjectionWorker

    stop = threading.Event()
    worker = DjangoProjectionWorker(
        conf.get_projection("orders"), shop.app.store, shop.engine, poll_timeout=0.05
    )

    def later() -> None:
        time.sleep(0.3)  # the request below is already waiting when the worker starts
        worker.run(stop)

    thread = threading.Thread(target=later)
    thread.start()
    try:
        fresh = api.get(f"/api/orders/{order}", {"after": data["after"]})
        assert fresh.status_code == 200
        assert fresh.json()["caught_up"] is True and fresh.json()["data"]["status"] == "confirmed"
        listing = api.get("/api/orders/", {"after": data["after"], "status": "confirmed"}).json()
        assert listing["count"] == 1 and listing["caught_up"] is True
    finally:
        stop.set()
        thread.join(timeout=10)


# -- T8: malformed command input ---------------------------------------------------------------

INJECTIONS = [
    "'; DROP TABLE shop_customers; --",
    '" OR 1=1 --',
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "{{ 7*7 }}",
    "../../etc/passwd",
    "\u0000",
]


def deep(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = {"a": [value]}
    return value


def raw_line(customer_id: str, *, quantity: str, unit_price: str) -> str:
    """JSON text with bare tokens (NaN, Infinity) that json.dumps would never write."""
    line = f'{{"product": "Tea", "quantity": {quantity}, "unit_price": {unit_price}}}'
    return f'{{"customer_id": "{customer_id}", "lines": [{line}]}}'


def table_of_cases(customer_id: str, order_id: str) -> list[tuple[str, str, Any]]:
    """(label, command type, body): every one invalid; the body is JSON text or an object."""
    line = {"product": "Tea", "quantity": 1, "unit_price": "1.00"}
    register = {"name": "Ada", "email": "ada@example.com", "address": ADDRESS}
    cases: list[tuple[str, str, Any]] = [
        ("empty object", "RegisterCustomer", {}),
        ("missing email", "RegisterCustomer", {k: v for k, v in register.items() if k != "email"}),
        ("missing address", "RegisterCustomer", {"name": "Ada", "email": "a@example.com"}),
        ("name is a number", "RegisterCustomer", {**register, "name": 42}),
        ("name is a list", "RegisterCustomer", {**register, "name": ["Ada"]}),
        ("name is null", "RegisterCustomer", {**register, "name": None}),
        ("address is a string", "RegisterCustomer", {**register, "address": "Berlin"}),
        ("oversized name", "RegisterCustomer", {**register, "name": "x" * 100_001}),
        ("oversized email", "RegisterCustomer", {**register, "email": "a" * 300 + "@example.com"}),
        (
            "unknown country",
            "RegisterCustomer",
            {**register, "address": {**ADDRESS, "country": "XX"}},
        ),
        ("unknown field", "RegisterCustomer", {**register, "is_admin": True}),
        ("client sets metadata", "RegisterCustomer", {**register, "user": "root"}),
        ("invalid uuid", "RegisterCustomer", {**register, "customer_id": "1234"}),
        ("uuid is a number", "ConfirmOrder", {"order_id": 12345}),
        ("uuid with injection", "ConfirmOrder", {"order_id": f"{order_id}' OR '1'='1"}),
        ("command id not a uuid", "ConfirmOrder", {"order_id": order_id, "command_id": "x"}),
        ("no lines", "PlaceOrder", {"customer_id": customer_id, "lines": []}),
        ("lines not a list", "PlaceOrder", {"customer_id": customer_id, "lines": line}),
        (
            "quantity zero",
            "PlaceOrder",
            {"customer_id": customer_id, "lines": [{**line, "quantity": 0}]},
        ),
        (
            "quantity float",
            "PlaceOrder",
            {"customer_id": customer_id, "lines": [{**line, "quantity": 1.5}]},
        ),
        (
            "quantity huge",
            "PlaceOrder",
            {"customer_id": customer_id, "lines": [{**line, "quantity": 10**30}]},
        ),
        (
            "price negative",
            "PlaceOrder",
            {"customer_id": customer_id, "lines": [{**line, "unit_price": "-1"}]},
        ),
        (
            "price NaN string",
            "PlaceOrder",
            {"customer_id": customer_id, "lines": [{**line, "unit_price": "NaN"}]},
        ),
        (
            "price Infinity",
            "PlaceOrder",
            {"customer_id": customer_id, "lines": [{**line, "unit_price": "Infinity"}]},
        ),
        (
            "price too precise",
            "PlaceOrder",
            {"customer_id": customer_id, "lines": [{**line, "unit_price": "0.001"}]},
        ),
        (
            "too many lines",
            "PlaceOrder",
            {
                "customer_id": customer_id,
                "lines": [{**line, "product": f"p{i}"} for i in range(51)],
            },
        ),
        (
            "bad date",
            "PlaceOrder",
            {"customer_id": customer_id, "lines": [line], "requested_delivery": "31/12/2026"},
        ),
        (
            "bool as string",
            "PlaceOrder",
            {"customer_id": customer_id, "lines": [line], "gift_wrap": "perhaps"},
        ),
        ("bad enum", "ShipOrder", {"order_id": order_id, "carrier": "pigeon"}),
        ("bad literal", "CancelOrder", {"order_id": order_id, "reason": "bored"}),
        ("oversized note", "CancelOrder", {"order_id": order_id, "note": "x" * 501}),
        ("nested line missing", "AddOrderLine", {"order_id": order_id}),
        ("nested line wrong", "AddOrderLine", {"order_id": order_id, "line": {"product": 1}}),
        ("deep nesting in a field", "RegisterCustomer", {**register, "name": deep(50)}),
        ("unknown command", "DropAllTables", register),
        ("unknown command with injection", "'; DROP TABLE x; --", register),
        (
            "raw NaN",
            "PlaceOrder",
            raw_line(customer_id, quantity="NaN", unit_price="NaN"),
        ),
        (
            "raw Infinity",
            "PlaceOrder",
            raw_line(customer_id, quantity="1", unit_price="Infinity"),
        ),
        ("deep nesting", "RegisterCustomer", "[" * 100_000 + "]" * 100_000),
        ("not json", "RegisterCustomer", "name=Ada&email=x"),
        ("json array", "RegisterCustomer", "[]"),
        ("json string", "RegisterCustomer", '"RegisterCustomer"'),
        ("json null", "RegisterCustomer", "null"),
        ("empty body", "RegisterCustomer", ""),
        ("invalid utf-8", "RegisterCustomer", b'{"name": "\xff\xfe"}'),
        ("oversized body", "RegisterCustomer", json.dumps({**register, "pad": "x" * 300_000})),
        ("duplicate keys", "ConfirmOrder", '{"order_id": "x", "order_id": "y"}'),
    ]
    for text in INJECTIONS:
        cases.append(
            (f"injection in name {text[:10]!r}", "RegisterCustomer", {**register, "email": text})
        )
        cases.append(
            (f"injection in uuid {text[:10]!r}", "DeactivateCustomer", {"customer_id": text})
        )
        cases.append(
            (
                f"injection in country {text[:10]!r}",
                "ChangeCustomerAddress",
                {"customer_id": customer_id, "address": {**ADDRESS, "country": text}},
            )
        )
    return cases


class T8:
    """Counts for the figure line."""

    inputs = 0
    rejected = 0
    server_errors = 0


def _send(api: Client, shop: Any, command_type: str, body: Any) -> int:
    head = shop.head()
    response = post(api, command_type, body)
    T8.inputs += 1
    if 400 <= response.status_code < 500:
        T8.rejected += 1
    if response.status_code >= 500:
        T8.server_errors += 1
    assert response.status_code in {400, 404, 413, 415}, (command_type, body, response.content)
    assert response["Content-Type"] == "application/json"
    assert shop.head() == head, f"{command_type} wrote events for invalid input"
    return response.status_code


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=50),
    st.sampled_from(INJECTIONS),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


def test_t8_malformed_command_input(
    api: Client, shop: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    data = seed(api)
    customer_id, order_id = data["people"]["Ada"], data["orders"][0]
    T8.inputs = T8.rejected = T8.server_errors = 0
    events_before = shop.head()

    # 1. A table of named cases: every kind of bad input.
    statuses: dict[str, int] = {}
    for label, command_type, body in table_of_cases(customer_id, order_id):
        statuses[label] = _send(api, shop, command_type, body)
    assert statuses["unknown command"] == 404 and statuses["oversized body"] == 413
    assert statuses["raw NaN"] == statuses["deep nesting"] == statuses["invalid utf-8"] == 400

    # 2. Hypothesis: each command's fields replaced by arbitrary JSON (kept invalid).
    valid = {
        "RegisterCustomer": {"name": "Ada", "email": "ada@example.com", "address": ADDRESS},
        "PlaceOrder": {
            "customer_id": customer_id,
            "lines": [{"product": "Tea", "quantity": 1, "unit_price": "1.00"}],
        },
        "ShipOrder": {"order_id": order_id, "carrier": "dhl"},
        "CancelOrder": {"order_id": order_id, "reason": "other"},
        "ChangeCustomerAddress": {"customer_id": customer_id, "address": ADDRESS},
    }
    breakable = {k: [f for f in v if f not in {"name"}] for k, v in valid.items()}

    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        command_type = data.draw(st.sampled_from(sorted(valid)))
        body = dict(valid[command_type])
        field = data.draw(st.sampled_from(breakable[command_type]))
        value = data.draw(json_values)
        # Keep it invalid: a value of the wrong JSON type for that field.
        if field in {"customer_id", "order_id"}:
            value = data.draw(
                st.one_of(json_values.filter(lambda v: not _uuid(v)), st.sampled_from(INJECTIONS))
            )
        elif field == "address":
            value = data.draw(json_values.filter(lambda v: not isinstance(v, dict)))
        elif field == "lines":
            value = data.draw(json_values.filter(lambda v: not isinstance(v, list) or not v))
        elif field == "email":
            value = data.draw(json_values.filter(lambda v: not isinstance(v, str) or "@" not in v))
        elif field == "carrier":
            value = data.draw(
                json_values.filter(lambda v: v not in ["dhl", "ups", "fedex", "post"])
            )
        elif field == "reason":
            value = data.draw(
                json_values.filter(
                    lambda v: (
                        v not in ["customer request", "out of stock", "payment failed", "other"]
                    )
                )
            )
        body[field] = value
        _send(api, shop, command_type, body)

    fuzz()
    events_written = sum(shop.head().values()) - sum(events_before.values())
    line = (
        f"T8: inputs={T8.inputs} rejected={T8.rejected} events_written={events_written} "
        f"server_errors={T8.server_errors}"
    )
    with capsys.disabled():
        print("\n" + line)
    assert T8.rejected == T8.inputs and events_written == 0 and T8.server_errors == 0
    assert T8.inputs >= 200


def _uuid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        UUID(value)
    except ValueError:
        return False
    return True


def test_nan_floats_never_reach_a_decimal() -> None:
    from sample_app.shop.domain import OrderLine

    with pytest.raises(ValueError, match="finite"):
        OrderLine(product="Tea", quantity=1, unit_price=Decimal(math.nan))  # type: ignore[arg-type]
