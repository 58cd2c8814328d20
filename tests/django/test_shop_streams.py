"""The shop's streaming tables over HTTP: pull queries over the hourly and daily windows
(key filters, window bounds, closed rows), the server-sent-events push of their changes, and
the admin's stream page (late events, re-drive)."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from django.test import Client, RequestFactory

from framework.contrib.django.streams import push_view
from sample_app.shop.urls import daily_query
from tests.django.test_shop_api import ok, seed


def test_pull_queries_filter_windows_by_key_bounds_and_state(
    admin_client: Client, shop: Any, worker: Any
) -> None:
    seed(admin_client)  # one confirmed order: Ada's, 5.00, shipped to DE
    worker()
    days = admin_client.get("/api/sales/daily", {"country": "de"}).json()
    assert days["count"] == 1
    (day,) = days["results"]
    assert day["country"] == "DE" and Decimal(day["revenue"]) == 5 and day["orders"] == 1
    span = dt.datetime.fromisoformat(day["window_end"]) - dt.datetime.fromisoformat(
        day["window_start"]
    )
    assert span in {dt.timedelta(hours=23), dt.timedelta(hours=24), dt.timedelta(hours=25)}
    assert admin_client.get("/api/sales/daily", {"country": "FR,US"}).json()["count"] == 0
    # No tick has passed the window yet: it is open, and `closed=true` finds nothing.
    assert admin_client.get("/api/sales/hourly", {"closed": "false"}).json()["count"] == 1
    assert admin_client.get("/api/sales/hourly", {"closed": "true"}).json()["count"] == 0
    start = day["window_start"]
    assert admin_client.get("/api/sales/daily", {"since": start}).json()["count"] == 1
    later = (dt.datetime.fromisoformat(start) + dt.timedelta(days=1)).isoformat()
    assert admin_client.get("/api/sales/daily", {"since": later}).json()["count"] == 0
    assert "state" not in day and "revision" in day


@pytest.mark.parametrize(
    ("params", "parameter", "fragment"),
    [
        ({"closed": "maybe"}, "closed", "use true or false"),
        ({"since": "yesterday"}, "since", "is not valid"),
        ({"ordering": "state"}, "ordering", "cannot order by"),
        ({"colour": "red"}, "colour", "unknown parameter"),
    ],
)
def test_pull_queries_refuse_bad_parameters(
    admin_client: Client, shop: Any, params: dict[str, str], parameter: str, fragment: str
) -> None:
    response = admin_client.get("/api/sales/daily", params)
    assert response.status_code == 400
    assert response.json()["parameter"] == parameter and fragment in response.json()["error"]


def _events(chunks: Any) -> Any:
    """The server-sent events of a streaming response, as (event, data) pairs."""
    for chunk in chunks:
        text = chunk.decode()
        if text.startswith(":") or text.startswith("retry"):
            yield "comment", None
            continue
        fields = dict(line.split(": ", 1) for line in text.strip().splitlines())
        yield fields["event"], json.loads(fields["data"])


def test_the_push_view_streams_the_rows_then_each_change(
    admin_client: Client, shop: Any, worker: Any, make_user: Any
) -> None:
    data = seed(admin_client)
    worker()
    request = RequestFactory().get("/api/sales/daily/events", {"country": "DE"})
    request.user = make_user("analyst", "shop.view_salesperhour")
    response = push_view(daily_query, seconds=60, poll=0.02)(request)
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    events = _events(response.streaming_content)
    first = next(e for e in events if e[0] != "comment")
    assert first[0] == "row" and first[1]["orders"] == 1 and first[1]["country"] == "DE"
    # Ada's other order is confirmed: the same day's row changes, and only that is pushed.
    ok(admin_client, "ConfirmOrder", {"order_id": data["orders"][0]})
    worker()
    changed = next(e for e in events if e[0] != "comment")
    assert changed[0] == "row" and changed[1]["orders"] == 2
    assert changed[1]["revision"] > first[1]["revision"]
    assert changed[1]["window_start"] == first[1]["window_start"]
    response.close()


def test_the_push_view_refuses_strangers_and_unknown_filters(
    client: Client, admin_client: Client, shop: Any
) -> None:
    assert client.get("/api/sales/daily/events").status_code == 401
    response = admin_client.get("/api/sales/hourly/events", {"colour": "red"})
    assert response.status_code == 400 and "unknown parameter" in response.json()["error"]
    response = admin_client.get("/api/sales/hourly/events", {"closed": "maybe"})
    assert response.status_code == 400 and response.json()["parameter"] == "closed"


def _confirm_two_hours_ago(shop: Any, order_id: Any) -> None:
    """Append a confirmation of ``order_id`` stamped two hours back: a late event for the
    hourly window once a later confirmation has moved the partition's stream time."""
    from framework.codec import codec
    from framework.commands import Metadata
    from framework.streaming.testing import Partitions
    from framework.testing import ev
    from sample_app.shop.domain import Address, Order

    order_id = UUID(str(order_id))
    moment = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    address = Address(street="Main St 1", city="Basel", country="CH")
    late = ev(
        Order.Confirmed, id=order_id, timestamp=moment, total=Decimal("9.00"), ship_to=address
    )
    (event,) = Partitions._events(late, 0, 1, {order_id: 1})
    shop.app.store.append([codec.encode(event, Metadata())])


def test_the_streams_page_shows_late_events_and_re_drives_the_parked_ones(
    admin_client: Client,
    shop: Any,
    worker: Any,
    make_user: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django.urls import reverse

    from projections.sales import SalesPerHourProjection
    from tests.django.test_shop_admin import messages_of

    # The hourly window parks late events (the sample amends them) so there is one to re-drive.
    monkeypatch.setattr(SalesPerHourProjection.hourly, "late", "dead_letter")
    data = seed(admin_client)  # confirms one order now
    _confirm_two_hours_ago(shop, data["orders"][0])
    worker()
    url = reverse("admin:keel_stream_changelist")
    page = admin_client.get(url)
    assert page.status_code == 200
    rows = {p["name"]: p for p in page.context["projections"]}
    assert set(rows) == {"orders", "sales_per_hour", "shop_streams"}
    sales = rows["sales_per_hour"]
    # Late for the day too, which amends (as the sample's windows do).
    late = sorted((e.stream, e.action) for e in sales["late"])
    assert late == [("daily", "amend"), ("hourly", "dead_letter")]
    assert sales["status"].late_events["hourly"] == {"dead_letter": 1}
    assert b"Re-drive selected late events" in page.content
    (parked,) = [e for e in sales["late"] if e.action == "dead_letter"]
    assert parked.late_by_ms >= 2 * 3600 * 1000 - 60_000

    viewer = Client()
    viewer.force_login(make_user("watcher", "keel.view_projection"))
    assert viewer.get(url).status_code == 200
    redrive = reverse("admin:keel_stream_redrive", args=["sales_per_hour"])
    choice = {"late": f"hourly@{parked.partition}:{parked.offset}"}
    assert viewer.post(redrive, choice).status_code == 403
    assert admin_client.get(redrive).status_code == 405
    response = admin_client.post(redrive, {"late": "hourly@nowhere"})
    assert "is no late event" in messages_of(response)[-1]

    response = admin_client.post(redrive, choice)
    assert response.status_code == 302
    assert "1 late event(s) re-driven through the log" in messages_of(response)[-1]
    worker()
    hours = admin_client.get("/api/sales/hourly", {"ordering": "window_start"}).json()
    assert [h["orders"] for h in hours["results"]] == [1, 1]
    page = admin_client.get(url)
    late = {p["name"]: p for p in page.context["projections"]}["sales_per_hour"]["late"]
    assert sorted(e.action for e in late) == ["amend", "redriven"]
    # Re-driving it again finds nothing parked there, and says so.
    response = admin_client.post(redrive, choice)
    assert "no late event of sales_per_hour is parked at" in messages_of(response)[-1]
