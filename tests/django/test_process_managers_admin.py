"""The process managers in Django: run_process_managers / process_status and the admin's
process-managers page with each instance's timeline (the sample's payment process, on the
embedded SQLite stores)."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command, load_command_class
from django.core.management.base import CommandError
from django.test import Client

from framework.contrib.django import conf
from framework.process import FakeClock
from sample_app.shop.commands import ConfirmOrder, PlaceOrder, RegisterCustomer

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "readmodels"])

ADDRESS = {"street": "1 Main St", "city": "Berlin", "country": "DE"}


@pytest.fixture
def payments(shop: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("KEEL_SHOP_EVENT_STORE", f"sqlite:///{shop.tmp}/shop-events.db")
    monkeypatch.setenv("KEEL_PAYMENTS_EVENT_STORE", f"sqlite:///{shop.tmp}/payments-events.db")
    worker = conf.get_process_workers()["payment_process"]
    worker.clock = clock = FakeClock()
    for i in worker.inputs:
        i.clock = clock
    worker.setup()
    customer = shop.app.execute(
        RegisterCustomer(name="Ada", email="ada@example.com", address=ADDRESS)
    ).aggregate_id
    order = shop.app.execute(
        PlaceOrder(
            customer_id=customer, lines=[{"product": "Tea", "quantity": 1, "unit_price": "2.00"}]
        )
    ).aggregate_id
    shop.app.execute(ConfirmOrder(order_id=order))
    for w in worker.workers:
        w.run(until_caught_up=True)
    worker.step()
    return worker, order


def run(name: str, *args: str) -> str:
    out = io.StringIO()
    call_command(name, *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


@pytest.mark.parametrize("name", ["run_process_managers", "process_status"])
def test_the_commands_have_helpful_help(name: str) -> None:
    command = load_command_class("framework.contrib.django", name)
    assert len(command.help) > 80
    assert "--start-from" in command.create_parser("manage.py", name).format_help() or (
        name == "process_status"
    )


def test_status_shows_the_instance_and_an_overdue_deadline(payments: Any) -> None:
    worker, order = payments
    [found] = json.loads(run("process_status", "--json"))
    assert (found["active"], found["completed"], found["overdue"]) == (1, 0, [])
    assert found["oldest_open"][0] == str(order)
    worker.clock.advance(timedelta(minutes=31, seconds=60))
    with pytest.raises(CommandError, match="1 deadline"):
        run("process_status", "--grace", "30")
    with pytest.raises(CommandError, match="unknown process manager"):
        run("process_status", "nope")
    with pytest.raises(CommandError, match="unknown process manager"):
        run("run_process_managers", "nope")


def test_the_admin_page_and_an_instance_timeline(payments: Any, admin_client: Client) -> None:
    _worker, order = payments
    page = admin_client.get("/admin/keel/projection/process-managers/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "payment_process" in text and str(order) in text
    assert 'class="keel-pm-active">1<' in text
    timeline = admin_client.get(f"/admin/keel/projection/process-managers/payment_process/{order}/")
    assert timeline.status_code == 200
    body = timeline.content.decode()
    for kind in ("Triggered", "CommandIssued", "DeadlineScheduled"):
        assert f"keel-fact-{kind}" in body
    missing = admin_client.get("/admin/keel/projection/process-managers/payment_process/nope/")
    assert missing.status_code == 404
    projections = admin_client.get("/admin/keel/projection/")
    assert "keel-process-managers-link" in projections.content.decode()


def test_the_page_needs_the_view_permission(payments: Any, make_user: Any) -> None:
    client = Client()
    client.force_login(make_user("clerk"))
    assert client.get("/admin/keel/projection/process-managers/").status_code in (302, 403)
