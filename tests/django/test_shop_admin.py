"""The admin with the Django test client: every shop command through its generated form,
invalid input, permissions, CSRF, admin actions, read-only read models, event history and the
projections page."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import pytest
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from projections import customers, orders
from sample_app.shop.domain import Order

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "readmodels"])

ADDRESS = {
    "address__street": "Unter den Linden 1",
    "address__city": "Berlin",
    "address__postcode": "10117",
    "address__country": "DE",
}


def command_url(command_type: str) -> str:
    return reverse("admin:keel_command_execute", args=[command_type])


def lines_formset(*lines: tuple[str, object, object], extra: int = 1) -> dict[str, object]:
    data: dict[str, object] = {
        "lines-TOTAL_FORMS": len(lines) + extra,
        "lines-INITIAL_FORMS": 0,
        "lines-MIN_NUM_FORMS": 0,
        "lines-MAX_NUM_FORMS": 50,
    }
    for n, (product, quantity, price) in enumerate(lines):
        data |= {
            f"lines-{n}-product": product,
            f"lines-{n}-quantity": quantity,
            f"lines-{n}-unit_price": price,
        }
    return data


def open_form(client: Client, command_type: str, prefill: dict[str, object] | None = None) -> Any:
    """GET a command form as a person would: the admin redirects to the form's own URL (with
    its signed ``form`` token), which fixes the form's generated ids."""
    page = client.get(command_url(command_type), prefill or {}, follow=True)
    assert page.status_code == 200, page.content[:500]
    assert page.redirect_chain and "form=" in page.redirect_chain[-1][0]
    return page


def form_url(page: Any) -> str:
    return f"{page.request['PATH_INFO']}?{page.request['QUERY_STRING']}"


def submit(client: Client, command_type: str, data: dict[str, object]) -> Any:
    """Open the form (prefilled with the ids in ``data``), then POST ``data`` to it. The
    response carries ``generated``: the ids the form chose."""
    page = open_form(client, command_type, {k: v for k, v in data.items() if k.endswith("_id")})
    generated = {n: page.context["form"].initial[n] for n in page.context["form"].generated_ids}
    response = client.post(form_url(page), data)
    response.generated = generated
    return response


def actions_of(page: Any) -> list[str]:
    form = page.context.get("action_form")
    return [name for name, _ in form.fields["action"].choices if name] if form else []


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def register(client: Client, name: str = "Ada Lovelace", **address: str) -> UUID:
    response = submit(
        client,
        "RegisterCustomer",
        {"name": name, "email": "ada@example.com", **ADDRESS, **address},
    )
    assert response.status_code == 302, response.content[:2000]
    return UUID(str(response.generated["customer_id"]))


def place(client: Client, customer_id: UUID, *lines: tuple[str, object, object]) -> UUID:
    response = submit(
        client,
        "PlaceOrder",
        {
            "customer_id": customer_id,
            **lines_formset(*(lines or (("Tea", 2, "3.50"), ("Cake", 1, "12.00")))),
        },
    )
    assert response.status_code == 302, response.content[:3000]
    return UUID(str(response.generated["order_id"]))


# -- every command through its form ------------------------------------------------------------


def test_every_command_through_the_admin_forms(
    admin_client: Client, shop: Any, worker: Any
) -> None:
    listing = admin_client.get(reverse("admin:keel_command_changelist"))
    assert listing.status_code == 200
    names = re.findall(r'data-command="(\w+)">([^<]+)<', listing.content.decode())
    assert sorted(n for n, _ in names) == sorted(shop.app.command_types)
    assert ("PlaceOrder", "Place order") in names  # people's words, sorted by them
    assert [label for _, label in names] == sorted(label for _, label in names)

    customer_id = register(admin_client)
    row = shop.rows(customers.customers, customer_id=customer_id)
    assert row and row[0]["country"] == "DE" and row[0]["name"] == "Ada Lovelace"

    # Redirected to the customer's row, which the worker had already applied.
    response = submit(
        admin_client,
        "ChangeCustomerAddress",
        {"customer_id": customer_id, **ADDRESS, "address__city": "Paris", "address__country": "FR"},
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:shop_customer_change", args=[str(customer_id)])
    assert messages_of(response)[0].startswith("Change customer address: done for Customer ")
    assert shop.rows(customers.customers, customer_id=customer_id)[0]["city"] == "Paris"

    order_id = place(admin_client, customer_id, ("Tea", 2, "3.50"), ("Cake", 1, "12.00"))
    order = shop.rows(orders.orders, order_id=order_id)[0]
    assert (order["customer_name"], order["customer_country"]) == ("Ada Lovelace", "FR")
    assert order["total"] == Decimal("19.00") and order["status"] == "open"

    steps = [
        (
            "AddOrderLine",
            {"line__product": "Scones", "line__quantity": 6, "line__unit_price": "1.25"},
        ),
        ("RemoveOrderLine", {"product": "Cake"}),
        ("ConfirmOrder", {}),
        ("ShipOrder", {"carrier": "ups", "tracking_number": "1Z999"}),
    ]
    for command_type, fields in steps:
        response = submit(admin_client, command_type, {"order_id": order_id, **fields})
        assert response.status_code == 302, (command_type, response.content[:2000])
        assert response["Location"] == reverse("admin:shop_order_change", args=[str(order_id)])
    order = shop.rows(orders.orders, order_id=order_id)[0]
    assert order["status"] == "shipped" and order["total"] == Decimal("14.50")
    assert order["carrier"] == "ups" and order["tracking_number"] == "1Z999"

    other = place(admin_client, customer_id)
    response = submit(
        admin_client, "CancelOrder", {"order_id": other, "reason": "out of stock", "note": "sorry"}
    )
    assert response.status_code == 302
    assert shop.rows(orders.orders, order_id=other)[0]["status"] == "cancelled"

    response = submit(admin_client, "DeactivateCustomer", {"customer_id": customer_id})
    assert response.status_code == 302
    assert shop.rows(customers.customers, customer_id=customer_id)[0]["status"] == "deactivated"

    # Who did it, and why, is in every event's metadata.
    history = shop.app.history(order_id)
    assert [e.type_name for e in history] == [
        "Order.Placed",
        "Order.LineAdded",
        "Order.LineRemoved",
        "Order.Confirmed",
        "Order.Shipped",
    ]
    assert {e.metadata.user for e in history} == {"root"}
    assert all(e.metadata.correlation_id for e in history)
    assert history[3].metadata.command_type == "ConfirmOrder"


def test_submitting_the_same_form_twice_executes_once(admin_client: Client, shop: Any) -> None:
    page = open_form(admin_client, "RegisterCustomer")
    data = {"name": "Ada", "email": "ada@example.com", **ADDRESS}
    first = admin_client.post(form_url(page), data)
    head = shop.head()
    # Back, then Execute again: the browser reloads the same URL, so the same form token.
    again = admin_client.get(form_url(page))
    assert again.context["form"].initial["command_id"] == page.context["form"].initial["command_id"]
    second = admin_client.post(form_url(again), data)
    assert first.status_code == second.status_code == 302
    assert shop.head() == head
    assert "had been executed before" in messages_of(second)[-1]


def test_a_link_cannot_choose_the_command_id(admin_client: Client, shop: Any) -> None:
    chosen = uuid4()
    page = admin_client.get(
        command_url("RegisterCustomer"), {"command_id": chosen, "customer_id": chosen}, follow=True
    )
    form = page.context["form"]
    assert chosen not in {form.initial["command_id"], form.initial["customer_id"]}
    # Nor can a posted field, nor somebody else's (or a forged) form token.
    data = {"name": "Ada", "email": "ada@example.com", **ADDRESS, "command_id": chosen}
    response = admin_client.post(form_url(page), data)
    assert response.status_code == 302
    assert shop.app.history(UUID(str(form.initial["customer_id"])))[0].metadata.command_id != chosen
    head = shop.head()
    forged = admin_client.post(command_url("RegisterCustomer") + "?form=x:y:z", data)
    assert forged.status_code == 302 and "form=" in forged["Location"]
    assert "nothing was done" in messages_of(forged)[-1]
    assert shop.head() == head


# -- invalid input, domain errors, permissions, CSRF -------------------------------------------


def test_invalid_input_shows_field_errors_and_writes_nothing(
    admin_client: Client, shop: Any
) -> None:
    head = shop.head()
    response = submit(
        admin_client,
        "RegisterCustomer",
        {"name": "  ", "email": "not-an-email", **ADDRESS, "address__country": "XX"},
    )
    assert response.status_code == 200
    form = response.context["form"]
    assert form.errors["name"] == ["This field is required."]
    assert "pattern" not in form.errors["email"][0] and "e-mail" in form.errors["email"][0]
    assert "Select a valid choice" in form.errors["address__country"][0]
    # One summary on top names every problem in plain words.
    assert b"Please correct the 3 errors below" in response.content
    assert response.context["error_summary"]["Email"] == form.errors["email"]
    assert response.context["error_summary"]["Address: country"]
    assert shop.head() == head

    customer_id = register(admin_client)
    head = shop.head()
    response = submit(
        admin_client,
        "PlaceOrder",
        {
            "customer_id": customer_id,
            **lines_formset(("Tea", 0, "3.50"), ("Cake", 1, "-1"), ("Jam", "lots", "1")),
        },
    )
    assert response.status_code == 200
    rows = response.context["formsets"][0][1].forms
    assert rows[0].errors == {"quantity": ["Input should be greater than 0"]}
    assert rows[1].errors == {"unit_price": ["Input should be greater than or equal to 0"]}
    assert rows[2].errors == {"quantity": ["Enter a whole number."]}
    response = submit(admin_client, "PlaceOrder", {"customer_id": customer_id, **lines_formset()})
    formset = response.context["formsets"][0][1]
    assert formset.non_form_errors() == ["List should have at least 1 item after validation, not 0"]
    page = open_form(admin_client, "PlaceOrder")
    response = admin_client.post(form_url(page), {"customer_id": str(customer_id)})
    assert response.status_code == 200  # the formset's management form is missing: refused
    assert shop.head() == head


def test_a_domain_error_is_an_admin_message_and_writes_nothing(
    admin_client: Client, shop: Any
) -> None:
    order_id = place(admin_client, register(admin_client))
    head = shop.head()
    response = submit(admin_client, "ShipOrder", {"order_id": order_id, "carrier": "dhl"})
    assert response.status_code == 200
    assert any(
        "Ship order was refused" in m and "confirm it first" in m for m in messages_of(response)
    )
    response = submit(admin_client, "ConfirmOrder", {"order_id": uuid4()})
    assert any("no Order has id" in m for m in messages_of(response))
    assert shop.head() == head


def test_permission_denied_is_403_and_writes_nothing(shop: Any, make_user: Any) -> None:
    clerk = Client()
    clerk.force_login(make_user("clerk", "keel.execute_registercustomer"))
    head = shop.head()
    assert clerk.get(command_url("PlaceOrder")).status_code == 403
    response = clerk.post(
        command_url("PlaceOrder"),
        {"customer_id": str(uuid4()), **lines_formset(("Tea", 1, "1"))},
    )
    assert response.status_code == 403
    assert shop.head() == head
    listing = clerk.get(reverse("admin:keel_command_changelist"))
    assert re.findall(r'data-command="(\w+)"', listing.content.decode()) == ["RegisterCustomer"]
    assert clerk.get(command_url("RegisterCustomer"), follow=True).status_code == 200
    # The 403 page is the admin's, with the reason.
    denied = clerk.get(command_url("PlaceOrder"))
    assert (
        b'id="header"' in denied.content
        and "You may not run “Place order”".encode() in denied.content
    )
    nobody = Client()
    nobody.force_login(make_user("viewer"))
    assert nobody.get(reverse("admin:keel_command_changelist")).status_code == 403
    assert Client().get(command_url("PlaceOrder")).status_code == 302  # to the login page
    assert clerk.get(command_url("NoSuchCommand")).status_code == 404


def test_csrf_is_enforced(shop: Any, make_user: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(make_user("root", superuser=True))
    data = {"name": "Ada", "email": "ada@example.com", **ADDRESS}
    head = shop.head()
    page = client.get(command_url("RegisterCustomer"), follow=True)
    assert client.post(form_url(page), data).status_code == 403
    assert shop.head() == head
    token = page.context["csrf_token"]
    response = client.post(form_url(page), {**data, "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert shop.head() != head


# -- admin actions and read-only read models ---------------------------------------------------


def test_admin_actions_skip_rows_they_do_not_apply_to(
    admin_client: Client, shop: Any, worker: Any
) -> None:
    customer_id = register(admin_client)
    ids = [place(admin_client, customer_id) for _ in range(3)]
    submit(admin_client, "CancelOrder", {"order_id": ids[1], "reason": "other"})
    worker()
    changelist = reverse("admin:shop_order_changelist")
    response = admin_client.post(
        changelist,
        {"action": "execute_confirmorder", "_selected_action": [str(i) for i in ids]},
    )
    assert response.status_code == 302
    notes = messages_of(response)
    assert any("Confirm order does not apply to 1 of the selected rows" in m for m in notes)
    assert any(m.startswith("Confirm order: done for 2 row(s)") for m in notes)
    statuses = {i: shop.rows(orders.orders, order_id=i)[0]["status"] for i in ids}
    assert statuses == {ids[0]: "confirmed", ids[1]: "cancelled", ids[2]: "confirmed"}
    confirms = [e for e in shop.app.history(ids[0]) if e.type_name == "Order.Confirmed"]
    assert confirms[0].metadata.user == "root"


def test_actions_ask_for_parameters_and_confirmation_once(
    admin_client: Client, shop: Any, worker: Any
) -> None:
    customer_id = register(admin_client)
    ids = [place(admin_client, customer_id) for _ in range(2)]
    for order_id in ids:
        submit(admin_client, "ConfirmOrder", {"order_id": order_id})
    worker()
    changelist = reverse("admin:shop_order_changelist")
    selected = {"action": "execute_shiporder", "_selected_action": [str(i) for i in ids]}
    page = admin_client.post(changelist, selected)
    assert page.status_code == 200  # the intermediate page: which carrier?
    assert [f.name for f in page.context["fields"]] == ["carrier"]
    assert shop.rows(orders.orders, order_id=ids[0])[0]["status"] == "confirmed"
    token = page.context["token"]
    confirmed = {**selected, "keel_confirmed": "yes", "keel_form": token, "carrier": "ups"}
    response = admin_client.post(changelist, confirmed)
    assert response.status_code == 302
    assert any(m.startswith("Ship order: done for 2 row(s)") for m in messages_of(response))
    assert {r["carrier"] for r in shop.rows(orders.orders)} == {"ups"}
    head = shop.head()
    admin_client.post(changelist, confirmed)  # Back and submit again: replays, ships nothing
    assert shop.head() == head

    # Destructive: a confirmation page first, with the reason asked once.
    response = admin_client.post(
        reverse("admin:shop_customer_changelist"),
        {"action": "execute_deactivatecustomer", "_selected_action": [str(customer_id)]},
    )
    assert response.status_code == 200 and b"This cannot be undone." in response.content
    assert shop.rows(customers.customers, customer_id=customer_id)[0]["status"] == "active"
    response = admin_client.post(
        reverse("admin:shop_customer_changelist"),
        {
            "action": "execute_deactivatecustomer",
            "_selected_action": [str(customer_id)],
            "keel_confirmed": "yes",
            "keel_form": response.context["token"],
            "reason": "moved away",
        },
    )
    assert response.status_code == 302
    worker()
    assert shop.rows(customers.customers, customer_id=customer_id)[0]["status"] == "deactivated"
    deactivated = shop.app.history(customer_id)[-1]
    assert deactivated.event.reason == "moved away"


def test_row_commands_follow_the_rows_state(admin_client: Client, shop: Any, worker: Any) -> None:
    order_id = place(admin_client, register(admin_client))
    worker()

    def offered() -> list[str]:
        page = admin_client.get(reverse("admin:shop_order_change", args=[str(order_id)]))
        return [c["name"] for c in page.context["keel_commands"]]

    assert offered() == ["AddOrderLine", "RemoveOrderLine", "ConfirmOrder", "CancelOrder"]
    submit(admin_client, "ConfirmOrder", {"order_id": order_id})
    assert offered() == ["ShipOrder", "CancelOrder"]
    # A destructive command's form asks first; others do not.
    cancel = open_form(admin_client, "CancelOrder", {"order_id": order_id}).content.decode()
    assert "cannot be undone" in cancel and 'value="Yes, cancel order"' in cancel
    ship = open_form(admin_client, "ShipOrder", {"order_id": order_id}).content.decode()
    assert "cannot be undone" not in ship and 'value="Ship order"' in ship
    submit(admin_client, "ShipOrder", {"order_id": order_id, "carrier": "dhl"})
    assert offered() == []


def test_actions_need_the_command_permission(shop: Any, make_user: Any) -> None:
    viewer = Client()
    viewer.force_login(make_user("viewer", "shop.view_order"))
    page = viewer.get(reverse("admin:shop_order_changelist"))
    assert page.status_code == 200
    assert actions_of(page) == []
    shipper = Client()
    shipper.force_login(make_user("shipper", "shop.view_order", "keel.execute_shiporder"))
    page = shipper.get(reverse("admin:shop_order_changelist"))
    assert actions_of(page) == ["execute_shiporder"]


def test_read_models_are_read_only_with_search_and_filters(
    admin_client: Client, shop: Any, worker: Any
) -> None:
    ada = register(admin_client)
    register(admin_client, name="Grace Hopper", address__country="US", address__city="Arlington")
    order_id = place(admin_client, ada)
    worker()
    url = reverse("admin:shop_customer_changelist")
    page = admin_client.get(url)
    assert page.status_code == 200
    assert actions_of(page) == ["execute_deactivatecustomer"]  # no delete_selected
    assert page.context["cl"].result_count == 2
    assert admin_client.get(url, {"q": "grace"}).context["cl"].result_count == 1
    assert admin_client.get(url, {"country": "US"}).context["cl"].result_count == 1
    assert admin_client.get(url, {"o": "-1"}).status_code == 200
    assert b'href="/admin/shop/customer/add/"' not in page.content
    orders_page = admin_client.get(reverse("admin:shop_order_changelist"), {"status": "open"})
    assert orders_page.context["cl"].result_count == 1
    assert b"Ada Lovelace" in orders_page.content
    change = admin_client.get(reverse("admin:shop_order_change", args=[str(order_id)]))
    assert change.status_code == 200
    body = change.content.decode()
    assert "keel-history" in body and f"ConfirmOrder/?order_id={order_id}" in body
    assert 'name="_save"' not in body  # read-only
    assert admin_client.get(reverse("admin:shop_order_add")).status_code == 403
    delete = reverse("admin:shop_order_delete", args=[str(order_id)])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert "keel-lines" in body and "<td>Tea</td>" in body  # order lines as a table
    assert reverse("admin:shop_customer_change", args=[str(ada)]) in body  # linked
    prefilled = open_form(admin_client, "ConfirmOrder", {"order_id": str(order_id)})
    assert prefilled.context["form"]["order_id"].value() == str(order_id)
    # The order is chosen by name in an autocomplete, not typed as a UUID.
    html = prefilled.content.decode()
    assert 'class="admin-autocomplete keel-chooser"' in html
    assert f"order {str(order_id)[:8]} of Ada Lovelace" in html
    # Searching by the short id the list shows.
    found = admin_client.get(reverse("admin:shop_order_changelist"), {"q": str(order_id)[:8]})
    assert found.context["cl"].result_count == 1
    assert admin_client.get(reverse("admin:shop_salesperhour_changelist")).status_code == 200


def test_the_choosers_search_read_models_for_permitted_users(
    admin_client: Client, shop: Any, worker: Any, make_user: Any
) -> None:
    register(admin_client)
    grace = register(admin_client, name="Grace Hopper")
    worker()
    url = reverse("admin:keel_command_choose", args=["customer_id"])
    answer = admin_client.get(url, {"term": "grace"}).json()
    assert answer == {
        "results": [{"id": str(grace), "text": "Grace Hopper"}],
        "pagination": {"more": False},
    }
    assert admin_client.get(reverse("admin:keel_command_choose", args=["nope"])).status_code == 404
    # A command's chooser offers only the rows it can apply to.
    submit(admin_client, "DeactivateCustomer", {"customer_id": grace})
    worker()
    assert admin_client.get(url, {"term": "grace"}).json()["results"] != []
    offered = admin_client.get(url, {"term": "grace", "command": "PlaceOrder"}).json()
    assert offered["results"] == []
    form = open_form(admin_client, "PlaceOrder").content.decode()
    assert f"{url}?command=PlaceOrder" in form
    clerk = Client()
    clerk.force_login(make_user("clerk", "keel.execute_placeorder"))
    assert clerk.get(url, {"term": "grace"}).status_code == 403  # may not view customers


def test_the_event_history_page(admin_client: Client, shop: Any, make_user: Any) -> None:
    order_id = place(admin_client, register(admin_client))
    submit(admin_client, "ConfirmOrder", {"order_id": order_id})
    page = admin_client.get(reverse("admin:keel_command_history", args=[order_id]))
    assert page.status_code == 200
    events = page.context["events"]
    assert [(e["version"], e["type"]) for e in events] == [
        (1, "Order.Placed"),
        (2, "Order.Confirmed"),
    ]
    assert '"product": "Tea"' in events[0]["data"]
    assert events[1]["metadata"].user == "root"
    assert b"Unter den Linden 1" in page.content  # the ship-to address, pretty-printed
    assert (
        admin_client.get(reverse("admin:keel_command_history", args=[uuid4()])).status_code == 404
    )
    clerk = Client()
    clerk.force_login(make_user("clerk", "keel.execute_placeorder"))
    assert clerk.get(reverse("admin:keel_command_history", args=[order_id])).status_code == 403


# -- the projections page ----------------------------------------------------------------------


def test_the_projections_page_rebuild_and_redrive(
    admin_client: Client, shop: Any, make_user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from framework.contrib.django import conf

    customer_id = register(admin_client)
    order_id = place(admin_client, customer_id)
    projection = conf.get_projection("orders")

    def broken(event: Any) -> Any:
        raise RuntimeError("bug in the confirmed handler")

    submit(admin_client, "ConfirmOrder", {"order_id": order_id})
    # What the join does with a confirmation (orders is a stream declaration: projections.orders)
    monkeypatch.setitem(projection.joined.feeds, Order.Confirmed, (broken, False))
    shop.catch_up()
    url = reverse("admin:keel_projection_changelist")
    page = admin_client.get(url)
    assert page.status_code == 200
    rows = {r.name: r for r in page.context["projections"]}
    assert set(rows) == {"customers", "orders", "sales_per_hour", "order_history", "shop_streams"}
    assert rows["orders"].dead_letter_count == 1 and rows["orders"].lag == 0
    assert "bug in the confirmed handler" in rows["orders"].dead_letters[0]["error"]
    # The dead letter links to its aggregate's history; the worker that ran has a heartbeat.
    assert reverse("admin:keel_command_history", args=[order_id]).encode() in page.content
    assert rows["orders"].worker is not None and rows["orders"].worker.applied >= 1
    assert b"Re-drive selected dead letters" in page.content
    assert shop.rows(orders.orders, order_id=order_id)[0]["status"] == "open"

    monkeypatch.undo()
    redrive = reverse("admin:keel_projection_redrive", args=["orders"])
    assert admin_client.get(redrive).status_code == 405
    viewer = Client()
    viewer.force_login(make_user("viewer", "keel.view_projection"))
    assert viewer.get(url).status_code == 200
    assert viewer.post(redrive).status_code == 403
    assert viewer.post(reverse("admin:keel_projection_rebuild", args=["orders"])).status_code == 403
    response = admin_client.post(
        redrive, {"dead_letter": [str(rows["orders"].dead_letters[0]["id"])]}
    )
    assert response.status_code == 302
    assert "re-drove 1 dead letter(s); 0 remain" in messages_of(response)[-1]
    assert shop.rows(orders.orders, order_id=order_id)[0]["status"] == "confirmed"

    before = shop.rows(orders.orders)
    response = admin_client.post(reverse("admin:keel_projection_rebuild", args=["orders"]))
    assert response.status_code == 302
    assert "Rebuilding orders in the background" in messages_of(response)[-1]
    from framework.contrib.django import operations

    operations.wait_for_rebuilds(timeout=30)
    assert shop.rows(orders.orders) == before
    rows = {r.name: r for r in admin_client.get(url).context["projections"]}
    assert rows["orders"].rebuild is not None
    assert rows["orders"].rebuild.detail.startswith("done: events=")
    assert not rows["orders"].rebuild_running
    csrf = Client(enforce_csrf_checks=True)
    csrf.force_login(make_user("root2", superuser=True))
    assert csrf.post(reverse("admin:keel_projection_rebuild", args=["orders"])).status_code == 403
