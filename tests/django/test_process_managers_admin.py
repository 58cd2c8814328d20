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
from framework.database import create_engine
from framework.process import FakeClock
from sample_app.shop.commands import ConfirmOrder, PlaceOrder, RegisterCustomer
from tests.support.projection_support import free_port

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
    with pytest.raises(CommandError, match="--grace: must be a number of 0 or more, not '-5'"):
        run("process_status", "--grace", "-5")
    with pytest.raises(CommandError, match="--id names the dead letters to re-drive"):
        run("process_status", "--id", "3")  # would have shown the status, re-driving nothing


def test_status_of_an_unreachable_database_is_a_command_error_naming_it(
    shop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEEL_SHOP_EVENT_STORE", f"sqlite:///{shop.tmp}/shop-events.db")
    monkeypatch.setenv("KEEL_PAYMENTS_EVENT_STORE", f"sqlite:///{shop.tmp}/payments-events.db")
    url = f"postgresql+psycopg://nobody:secret@127.0.0.1:{free_port()}/keel"
    worker = conf.get_process_workers()["payment_process"]
    monkeypatch.setattr(worker, "engine", create_engine(url))
    with pytest.raises(CommandError) as refused:
        run("process_status")
    message = str(refused.value)
    assert "payment_process: cannot reach its database" in message
    assert "nobody:***@" in message and "secret" not in message


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


@pytest.fixture
def parked(payments: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The payments fixture's deadline, fallen due with a handler that fails: parked."""
    worker, order = payments

    def failing(state: Any, ctx: Any) -> Any:
        raise RuntimeError("the payment provider is out of reach")

    monkeypatch.setattr(worker.pm, "overdue", failing)
    monkeypatch.setattr(worker.pm, "max_attempts", 1)
    worker.clock.advance(timedelta(minutes=31))
    worker.step()
    return worker, order


def run_refused(name: str, *args: str, match: str) -> str:
    """Run a command that must end with a CommandError matching ``match``; its output."""
    out = io.StringIO()
    with pytest.raises(CommandError, match=match):
        call_command(name, *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_a_parked_deadline_shows_in_the_status_and_is_redriven_there(
    parked: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from framework.process.store import timeline

    worker, order = parked
    [found] = json.loads(run_refused("process_status", "--json", match="1 deadline.s. parked"))
    assert found["overdue"] == [] and found["dead_letters"] == 1
    [letter] = found["parked_deadlines"]
    assert (letter["instance_id"], letter["deadline"]) == (str(order), "payment_due")
    assert "out of reach" in letter["error_message"]
    monkeypatch.delattr(worker.pm, "overdue")  # fixed
    out = run("process_status", "--redrive")
    assert "payment_process: re-drove 1" in out and "parked deadlines: 0" in out
    with worker.engine.connect() as conn:
        kinds = [f["kind"] for f in timeline(conn, "payment_process", str(order))]
    assert kinds.count("DeadlineParked") == 1 and kinds.count("DeadlineReached") == 1


def test_a_redrive_of_an_id_that_is_not_parked_is_refused_and_redrives_nothing(
    parked: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker, _order = parked
    [letter] = worker.dead_letters()
    monkeypatch.delattr(worker.pm, "overdue")  # fixed: a re-drive would now succeed
    missing = letter.id + 1000
    out = run_refused(
        "process_status", "--redrive", "--id", str(letter.id), "--id", str(missing),
        match=f"not parked: dead letter id.s. {missing}; nothing was re-driven",
    )  # fmt: skip
    assert "re-drove" not in out
    assert [d.id for d in worker.dead_letters()] == [letter.id]  # still parked


def test_the_admin_lists_a_parked_deadline_and_redrives_it(
    parked: Any, admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker, _order = parked
    page = admin_client.get("/admin/keel/projection/process-managers/").content.decode()
    assert 'class="keel-pm-parked">1<' in page and "keel-parked-deadline" in page
    assert "out of reach" in page and "keel-pm-redrive" in page
    [letter] = worker.dead_letters()
    monkeypatch.delattr(worker.pm, "overdue")  # fixed
    answer = admin_client.post(
        "/admin/keel/projection/process-managers/payment_process/redrive/",
        {"dead_letter": [str(letter.id)]},
    )
    assert answer.status_code == 302
    after = admin_client.get(answer["Location"]).content.decode()
    assert "re-drove 1 dead letter" in after and 'class="keel-pm-parked">0<' in after
    assert worker.dead_letters() == [] and worker.status().parked == []


def test_redriving_needs_the_permission(parked: Any, make_user: Any) -> None:
    worker, _order = parked
    client = Client()
    client.force_login(make_user("viewer", "keel.view_projection"))
    [letter] = worker.dead_letters()
    answer = client.post(
        "/admin/keel/projection/process-managers/payment_process/redrive/",
        {"dead_letter": [str(letter.id)]},
    )
    assert answer.status_code == 403
    assert len(worker.dead_letters()) == 1


def test_the_metrics_view_reports_the_process_managers(
    payments: Any, admin_client: Client, settings: Any
) -> None:
    from tests.support import telemetry

    _worker, _order = payments
    telemetry.install()
    # Changing KEEL rebuilds the workers, on the wall clock: by it the fake clock's deadline
    # (2026-01-01) is long overdue.
    settings.KEEL = {**settings.KEEL, "METRICS_EXPORTER": "prometheus"}
    text = admin_client.get("/metrics").content.decode()
    for metric, value in (
        ("keel_process_active", 1),
        ("keel_process_deadlines_overdue", 1),
        ("keel_process_dead_letters", 0),
    ):
        assert telemetry.parse_metrics(text, metric, process="payment_process") == [value], metric
