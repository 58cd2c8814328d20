"""What the admin shows after a command and around it: the pending page while the read models
are behind, the event history of an aggregate with an undecodable event, and the admin log
entry every command leaves."""

from __future__ import annotations

import datetime as dt
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import pytest
from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.test import Client
from django.urls import reverse

from framework.persistence import NewEvent
from tests.django.test_shop_admin import form_url, lines_formset, open_form, place, register

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "readmodels"])


def test_a_read_model_behind_shows_the_pending_page_until_the_row_is_there(
    admin_client: Client, shop: Any
) -> None:
    customer_id = register(admin_client)  # no worker: the read models stay behind
    page = open_form(admin_client, "PlaceOrder", {"customer_id": customer_id})
    order_id = page.context["form"].initial["order_id"]
    response = admin_client.post(
        form_url(page), {"customer_id": customer_id, **lines_formset(("Tea", 1, "2.00"))}
    )
    assert response.status_code == 302
    pending = response["Location"]
    assert pending.startswith(
        reverse(
            "admin:keel_command_pending",
            args=[order_id, page.context["form"].initial["command_id"]],
        )
    )
    assert "?after=0:" in pending
    waiting = admin_client.get(pending)
    assert waiting.status_code == 200
    body = waiting.content.decode()
    assert "Order.Placed" in body and 'http-equiv="refresh"' in body
    assert "exist. Perhaps it was deleted" not in body
    assert [e["type"] for e in waiting.context["events"]] == ["Order.Placed"]
    behind = {p["name"]: p["behind"] for p in waiting.context["projections"]}
    assert behind["orders"]  # names what is still to apply
    shop.catch_up()  # the worker comes back
    arrived = admin_client.get(pending)
    assert arrived.status_code == 302
    assert arrived["Location"] == reverse("admin:shop_order_change", args=[str(order_id)])
    assert admin_client.get(arrived["Location"]).status_code == 200


def test_the_pending_page_refuses_what_it_cannot_wait_for(
    admin_client: Client, shop: Any, make_user: Any
) -> None:
    customer_id = register(admin_client)
    event = shop.app.history(customer_id)[0]
    url = reverse("admin:keel_command_pending", args=[customer_id, event.metadata.command_id])
    assert admin_client.get(url, {"after": "9:0"}).status_code == 404
    assert admin_client.get(url, {"after": "0:99999"}).status_code == 404
    stranger = Client()
    stranger.force_login(make_user("clerk", "keel.execute_placeorder"))
    assert stranger.get(url, {"after": "0:1"}).status_code == 403  # not their command


def test_the_history_of_an_aggregate_with_an_undecodable_event(
    admin_client: Client, shop: Any
) -> None:
    order_id = place(admin_client, register(admin_client))
    shop.app.store.append([NewEvent(order_id, 2, "Order.Confirmed", b"\x00{not json")])
    shop.app.store.append([NewEvent(order_id, 3, "Order.Teleported", b'{"data": {}}')])
    page = admin_client.get(reverse("admin:keel_command_history", args=[order_id]))
    assert page.status_code == 200
    events = page.context["events"]
    assert [(e["version"], e["type"], bool(e["error"])) for e in events] == [
        (1, "Order.Placed", False),
        (2, "Order.Confirmed", True),
        (3, "Order.Teleported", True),
    ]
    assert "EventDecodingError" in events[1]["error"] or "Error" in events[1]["error"]
    assert "{not json" in events[1]["data"]
    assert b"2 events of this history cannot be decoded" in page.content


def test_every_command_leaves_an_admin_log_entry(admin_client: Client, shop: Any) -> None:
    customer_id = register(admin_client)
    order_id = place(admin_client, customer_id)
    response = admin_client.post(
        "/api/commands/ConfirmOrder", {"order_id": str(order_id)}, content_type="application/json"
    )
    assert response.status_code == 201
    entries = list(LogEntry.objects.order_by("action_time"))
    assert [(e.object_id, e.action_flag) for e in entries] == [
        (str(customer_id), ADDITION),
        (str(order_id), ADDITION),
        (str(order_id), CHANGE),
    ]
    assert entries[2].change_message.startswith("Confirm order (command ")
    assert entries[2].content_type.model_class()._meta.label == "shop.Order"
    # It shows in the row's History and in Recent actions.
    shop.catch_up()
    history = admin_client.get(reverse("admin:shop_order_history", args=[str(order_id)]))
    assert b"Confirm order (command" in history.content
    index = admin_client.get(reverse("admin:index"))
    assert f"Order {str(order_id)[:8]}".encode() in index.content
    assert isinstance(UUID(entries[0].object_id), UUID)


def test_the_projections_page_shows_a_stopped_worker_and_the_lag(
    admin_client: Client, shop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from framework.contrib.django import heartbeats

    url = reverse("admin:keel_projection_changelist")
    register(admin_client)
    page = admin_client.get(url)
    rows = {r.name: r for r in page.context["projections"]}
    assert rows["customers"].worker is None  # never ran
    assert b"no worker seen" in page.content
    assert rows["customers"].lag > 0 and rows["customers"].lag_seconds >= 0
    shop.catch_up()
    rows = {r.name: r for r in admin_client.get(url).context["projections"]}
    assert rows["customers"].worker_alive and rows["customers"].lag == 0
    assert rows["customers"].worker.applied_at is not None
    # No beat for longer than STALE_AFTER: stopped, and the page says so.
    monkeypatch.setattr(heartbeats, "STALE_AFTER", 0.0)
    page = admin_client.get(url)
    assert not {r.name: r for r in page.context["projections"]}["customers"].worker_alive
    assert b"keel-worker-stopped" in page.content and b"keel-worker-running" not in page.content


def test_charts_of_sales_per_hour_and_of_lag(admin_client: Client, shop: Any) -> None:
    order_id = place(admin_client, register(admin_client))
    admin_client.post(
        "/api/commands/ConfirmOrder", {"order_id": str(order_id)}, content_type="application/json"
    )
    shop.catch_up()
    sales = admin_client.get(reverse("admin:shop_salesperhour_changelist")).content.decode()
    hourly, _, daily = sales.partition('id="shop-daily-chart"')
    assert 'id="shop-sales-chart"' in hourly and daily
    assert hourly.count('class="keel-bar"') == 48  # every hour, empty ones too
    assert "UTC: 19.00 €" in hourly  # the tooltip of this hour's bar: 2 x 3.50 + 12.00
    # Sales per Zurich day, from the daily window's pull query: every day of the last 14.
    today = dt.datetime.now(ZoneInfo("Europe/Zurich")).date()
    assert daily.split("</svg>")[0].count('class="keel-bar"') == 14
    assert f"{today:%Y-%m-%d}: 19.00 €" in daily
    page = admin_client.get(reverse("admin:keel_projection_changelist")).content.decode()
    assert 'id="keel-lag-chart"' in page and 'class="keel-line"' in page
